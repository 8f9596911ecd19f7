//! The shell completions and man pages the package ships (`linegate
//! completions SHELL`, `linegate man DIR`) cover the whole command line. The
//! record of what the command line is, is the binary's own `--help` text:
//! every command it lists, and every long option each command's `--help`
//! lists, must appear in the bash, zsh and fish scripts and in the man pages.

use std::collections::BTreeSet;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_linegate");

fn linegate(args: &[&str]) -> Output {
    match Command::new(BIN).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {BIN} {args:?}: {e}"),
    }
}

fn stdout_of(args: &[&str]) -> String {
    let out = linegate(args);
    assert!(
        out.status.success(),
        "linegate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// The commands `linegate --help` lists (without clap's own `help`).
fn commands_from_help() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let section = help
        .split("Commands:\n")
        .nth(1)
        .expect("--help has a Commands: section");
    let commands: Vec<String> = section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        commands.len() >= 8,
        "too few commands in --help: {commands:?}\n{help}"
    );
    commands
}

/// The long options (without the leading `--`) a command's `--help` lists.
fn long_options_from_help(command: &str) -> BTreeSet<String> {
    let help = stdout_of(&[command, "--help"]);
    let options: BTreeSet<String> = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| {
            let at = l.find("--")?;
            let name: String = l[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect();
    assert!(
        options.contains("help"),
        "{command} --help lists no --help: {help}"
    );
    options
}

#[test]
fn completions_name_every_command_and_option() {
    let commands = commands_from_help();
    let bash = stdout_of(&["completions", "bash"]);
    let zsh = stdout_of(&["completions", "zsh"]);
    let fish = stdout_of(&["completions", "fish"]);
    assert!(
        bash.contains("complete -F _linegate"),
        "bash script registers no completion"
    );
    assert!(
        zsh.starts_with("#compdef linegate"),
        "zsh script is no #compdef file"
    );

    for command in &commands {
        // bash: the command is a word of the top-level candidates and has a case of its own.
        assert!(
            bash.contains(&format!("linegate,{command})")),
            "bash completion has no case for `{command}`"
        );
        assert!(
            zsh.contains(&format!("'{command}:")),
            "zsh completion does not offer `{command}`"
        );
        assert!(
            fish.contains(&format!("-a \"{command}\"")),
            "fish completion does not offer `{command}`"
        );
        for option in long_options_from_help(command) {
            let long = format!("--{option}");
            assert!(bash.contains(&long), "bash: `{command} {long}` missing");
            assert!(zsh.contains(&long), "zsh: `{command} {long}` missing");
            assert!(
                fish.lines().any(|l| l
                    .contains(&format!("__fish_linegate_using_subcommand {command}"))
                    && l.contains(&format!("-l {option}"))),
                "fish: `{command} {long}` missing"
            );
        }
    }
}

#[test]
fn man_pages_cover_every_command_and_option() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listed = stdout_of(&["man", &dir.path().display().to_string()]);
    let commands = commands_from_help();

    let main = std::fs::read_to_string(dir.path().join("linegate.1")).expect("linegate.1 written");
    assert!(
        main.starts_with(".ie") || main.starts_with(".TH"),
        "linegate.1 is not roff: {main:.80}"
    );
    assert!(main.contains(".SH FILES") && main.contains("/etc/linegate/linegate.toml"));
    for command in &commands {
        let page = format!("linegate-{command}.1");
        assert!(
            main.contains(&format!("linegate\\-{}(1)", command.replace('-', "\\-"))),
            "linegate.1 does not list `{command}`"
        );
        assert!(
            listed.contains(&page),
            "`linegate man` did not report {page}: {listed}"
        );
        let text = std::fs::read_to_string(dir.path().join(&page))
            .unwrap_or_else(|e| panic!("{page} not written: {e}"));
        for option in long_options_from_help(command) {
            // roff writes a literal hyphen as \-
            let roff = format!("\\-\\-{}", option.replace('-', "\\-"));
            assert!(text.contains(&roff), "{page} does not document --{option}");
        }
    }
    // The hidden commands that make these files have no page of their own.
    assert!(!dir.path().join("linegate-man.1").exists());
    assert!(!dir.path().join("linegate-completions.1").exists());
}

#[test]
fn an_unknown_shell_or_an_unwritable_directory_is_an_error() {
    let out = linegate(&["completions", "tcsh"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("bash"),
        "error names neither the shell nor the choices: {err}"
    );

    let file = tempfile::NamedTempFile::new().expect("temp file");
    let under_a_file = file.path().join("man");
    let out = linegate(&["man", &under_a_file.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&under_a_file.display().to_string()),
        "error does not name the directory: {err}"
    );
}
