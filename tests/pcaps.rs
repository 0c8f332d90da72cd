//! The captures committed in pcaps/: each is listed in pcaps/README.md, opens in tshark, and
//! holds the HTTP messages the README says.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_committed_capture_is_listed_and_readable() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pcaps");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
            continue;
        }
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("{name} is not listed in pcaps/README.md"));
        let want: usize = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(rf_tap_tests::tshark_count(&path, "http"), want, "{name}");
        let (records, torn) = rf_tap_tests::read_pcap(&path);
        assert!(!torn && !records.is_empty(), "{name}");
        checked += 1;
    }
    assert!(checked > 0, "no captures found in {}", dir.display());
}
