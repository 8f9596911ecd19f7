//! The store's files on disk: created private (0700 folder, 0600 files, the
//! WAL's too) whatever the umask; the read-only commands (`status`,
//! `report`, `orders`) never create a store and say plainly when there is
//! none; an error opening the store names its cause once.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use linegate::store::{Store, FILE_NAME};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Open a store in a fresh folder under `umask`, write a row, and give the
/// modes of the folder, the file, its -wal and its -shm.
fn modes_under_umask(umask: libc::mode_t) -> [u32; 4] {
    let top = tempfile::tempdir().unwrap();
    let data_dir = top.path().join("var").join("linegate");
    // SAFETY: umask only sets the process's file mode mask; the tests of
    // this binary that create files only care that it never widens a mode.
    let before = unsafe { libc::umask(umask) };
    let store = Store::open(&data_dir);
    unsafe { libc::umask(before) };
    let store = store.unwrap();
    store
        .call_blocking(|c| {
            c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
            Ok(())
        })
        .unwrap();
    let db = data_dir.join(FILE_NAME);
    let side = |suffix: &str| data_dir.join(format!("{FILE_NAME}{suffix}"));
    let modes = [
        mode(&data_dir),
        mode(&db),
        mode(&side("-wal")),
        mode(&side("-shm")),
    ];
    drop(store);
    modes
}

#[test]
fn a_new_store_is_private_whatever_the_umask() {
    for umask in [0o022, 0o000, 0o002] {
        assert_eq!(
            modes_under_umask(umask),
            [0o700, 0o600, 0o600, 0o600],
            "folder, file, -wal, -shm under umask {umask:03o}"
        );
    }
}

fn linegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_linegate"))
        .args(args)
        .env_remove("LINEGATE_CONFIG")
        .output()
        .expect("the linegate binary runs")
}

fn config_with_data_dir(dir: &Path, data_dir: &Path) -> std::path::PathBuf {
    let file = dir.join("linegate.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nid = \"gw\"\nsite = \"s\"\ndata_dir = {:?}\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    file
}

#[test]
fn read_only_commands_without_a_store_create_nothing_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never-run");
    let config = config_with_data_dir(dir.path(), &data_dir);
    let config = config.to_str().unwrap();
    for args in [
        vec!["status", "-c", config],
        vec!["status", "-c", config, "--json"],
        vec!["report", "-c", config],
        vec!["orders", "-c", config],
    ] {
        let out = linegate(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let expected = format!(
            "no store at {}: has the agent run here?",
            data_dir.join(FILE_NAME).display()
        );
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(
            !data_dir.exists(),
            "{args:?} created {}",
            data_dir.display()
        );
    }
}

#[test]
fn a_store_that_cannot_be_created_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    // A plain file where a folder would have to be: refused even for root.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a folder").unwrap();
    let data_dir = blocker.join("data");
    let config = config_with_data_dir(dir.path(), &data_dir);
    let out = linegate(&["run", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot create the data folder"), "{stderr}");
    assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
    assert_eq!(
        stderr.matches("Not a directory").count(),
        1,
        "the cause once: {stderr}"
    );
}

#[test]
fn a_store_that_cannot_be_read_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let db = data_dir.join(FILE_NAME);
    std::fs::write(
        &db,
        "this is not a SQLite file, it is much longer than a header",
    )
    .unwrap();
    let config = config_with_data_dir(dir.path(), &data_dir);
    let out = linegate(&["status", "-c", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert_eq!(
        stderr.matches("not a database").count(),
        1,
        "the cause once: {stderr}"
    );
}
