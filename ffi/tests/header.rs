//! The committed header, `include/lanrage.h`, is what cbindgen makes of the source now: a
//! change to the ABI that forgot the header fails here. `LANRAGE_UPDATE_HEADER=1` rewrites it.

use std::path::Path;

#[test]
fn the_committed_header_matches_the_source() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml is readable and valid");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen can read the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");
    let path = crate_dir.join("include/lanrage.h");
    if std::env::var_os("LANRAGE_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("include/lanrage.h is writable");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "ffi/include/lanrage.h is stale: regenerate it with \
         `LANRAGE_UPDATE_HEADER=1 cargo test -p lanrage-ffi --test header` and commit it"
    );
}
