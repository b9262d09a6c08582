//! What the running games ask of the tunnel, merged into the one setting the tunnel can have.
//!
//! Each profile suggests a persistent keepalive and an MTU and names the ports its traffic
//! uses. The tunnel serves every running game at once, so the strictest wins: the smallest
//! MTU (a game whose packets must not fragment breaks on a larger one; the others only lose a
//! little room), the shortest keepalive (it costs 32 bytes per interval), and every game's
//! ports in the latency lane. With no game running the tunnel is as configured.

use crate::profile::GameProfile;

/// Tunnel settings that follow the running games.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// WireGuard persistent keepalive toward every member, in seconds.
    pub keepalive: u16,
    /// The tunnel interface's MTU.
    pub mtu: u16,
    /// Ports whose packets take the engine's latency lane, sorted.
    pub lane_ports: Vec<u16>,
}

impl Tuning {
    /// `base` (the configured settings) adjusted for `games`. A profile's keepalive of 0
    /// suggests nothing (it cannot turn off what the party needs), and a profile's MTU above
    /// the configured one is not taken: the configured one is what the path was sized for.
    pub fn for_games<'a>(
        base: &Tuning,
        games: impl IntoIterator<Item = &'a GameProfile>,
    ) -> Tuning {
        let mut tuning = base.clone();
        for game in games {
            if game.keepalive > 0 && (tuning.keepalive == 0 || game.keepalive < tuning.keepalive) {
                tuning.keepalive = game.keepalive;
            }
            tuning.mtu = tuning.mtu.min(game.mtu);
            tuning.lane_ports.extend(&game.ports);
        }
        tuning.lane_ports.sort_unstable();
        tuning.lane_ports.dedup();
        tuning
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileSet;

    fn base() -> Tuning {
        Tuning {
            keepalive: 25,
            mtu: 1420,
            lane_ports: vec![9999],
        }
    }

    fn game(keepalive: u16, mtu: u16, ports: &[u16]) -> GameProfile {
        let (set, _) = ProfileSet::embedded();
        GameProfile {
            keepalive,
            mtu,
            ports: ports.to_vec(),
            ..set.get("warcraft3").unwrap().clone()
        }
    }

    #[test]
    fn without_games_the_tunnel_is_as_configured() {
        assert_eq!(Tuning::for_games(&base(), []), base());
    }

    #[test]
    fn the_strictest_game_wins_and_ports_add_up() {
        let games = [game(15, 1400, &[6112]), game(20, 1380, &[7777, 6112])];
        let tuning = Tuning::for_games(&base(), &games);
        assert_eq!(
            tuning,
            Tuning {
                keepalive: 15,
                mtu: 1380,
                lane_ports: vec![6112, 7777, 9999],
            }
        );
    }

    #[test]
    fn a_game_cannot_loosen_the_configured_settings() {
        // Keepalive 0 and a larger MTU are no suggestions at all.
        let tuning = Tuning::for_games(&base(), &[game(0, 1500, &[]), game(60, 1420, &[])]);
        assert_eq!((tuning.keepalive, tuning.mtu), (25, 1420));
    }

    #[test]
    fn with_keepalive_configured_off_a_game_turns_it_on() {
        let off = Tuning {
            keepalive: 0,
            ..base()
        };
        assert_eq!(
            Tuning::for_games(&off, &[game(30, 1420, &[])]).keepalive,
            30
        );
    }
}
