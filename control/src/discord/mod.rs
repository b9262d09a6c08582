//! Discord, sans-IO: what the party tells a Discord channel (through a webhook or a bot) and
//! what a player's Discord client shows as their activity (Rich Presence, over the client's
//! local IPC socket). The daemon does the HTTP and the socket I/O.

pub mod ipc;
pub mod notify;

/// Something worth telling the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyEvent {
    Created { party: String },
    Joined { member: String },
    Left { member: String },
    GameStarted { member: String, game: String },
}

impl PartyEvent {
    /// One line of the message. Names are members' own words: Discord markdown and mentions
    /// in them are neutralised so nobody can ping `@everyone` through the party.
    pub fn line(&self) -> String {
        match self {
            PartyEvent::Created { party } => format!("🎮 Party **{}** created", plain(party)),
            PartyEvent::Joined { member } => format!("➕ **{}** joined", plain(member)),
            PartyEvent::Left { member } => format!("➖ **{}** left", plain(member)),
            PartyEvent::GameStarted { member, game } => {
                format!("🕹️ **{}** started {}", plain(member), plain(game))
            }
        }
    }
}

/// `text` with Discord's markdown and mention characters escaped.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_control()) {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']' | '(' | ')'
        ) {
            out.push('\\');
        }
        out.push(c);
        // A zero-width space after `@` breaks mentions (`@everyone`, `@here`, `<@id>`).
        if c == '@' {
            out.push('\u{200b}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_mention_or_format() {
        let line = PartyEvent::Joined {
            member: "@everyone **boss**".into(),
        }
        .line();
        assert_eq!(line, "➕ **@\u{200b}everyone \\*\\*boss\\*\\*** joined");
    }
}
