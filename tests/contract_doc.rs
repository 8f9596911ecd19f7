//! The project's copy of the wire contract (docs/contract.md) must say what the
//! shared contract says: central teams build against it.

#[test]
fn the_documented_contract_matches_the_shared_one() {
    let ours = std::fs::read_to_string("docs/contract.md").expect("docs/contract.md");
    let shared = ["../shared/contract.md", "../../shared/contract.md"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok());
    match shared {
        Some(shared) => assert!(
            ours.contains(shared.trim()),
            "docs/contract.md no longer contains the shared contract word for word"
        ),
        // Outside the workplace there is no shared copy: check the version at least.
        None => assert!(ours.contains("# linegate wire contract, v1")),
    }
}
