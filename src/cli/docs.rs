//! Shell completions and man pages, generated from the clap definitions in
//! `cli/mod.rs` so they can never disagree with `--help`. The hidden commands
//! `linegate completions SHELL` and `linegate man DIR` print/write them;
//! `scripts/package` runs them with a host binary and puts the output in the
//! Debian package. Nothing here reads a config or touches the store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write linegate.1 and linegate-<command>.1 into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The FILES and SEE ALSO sections of linegate.1: where the package puts things.
const MAIN_PAGE_TAIL: &str = r#".SH FILES
.TP
\fI/etc/linegate/linegate.toml\fR
The config (default of \fB\-c\fR; \fB$LINEGATE_CONFIG\fR overrides the default). Every key is annotated in it; \fBlinegate check\-config\fR reports every problem at once.
.TP
\fI/etc/linegate/mqtt\-password\fR
The uplink password (root only, 0600), handed to the service as the systemd credential \fImqtt\-password\fR.
.TP
\fI/var/lib/linegate/\fR
The SQLite store (the service's StateDirectory).
.TP
\fI/usr/lib/systemd/system/linegate.service\fR
The systemd unit: \fBsystemctl status linegate\fR, \fBjournalctl \-u linegate\fR, \fBsystemctl reload linegate\fR (re\-reads the config).
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5); /usr/share/doc/linegate/
"#;

pub fn completions(args: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "linegate", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: &ManArgs) -> Result<ExitCode> {
    for path in write_man_pages(&args.dir)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes linegate.1 and one page per visible command (linegate-run.1, ...),
/// returns their paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut pages = vec![(cmd.clone(), true)];
    pages.extend(
        cmd.get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| (c.clone(), false)),
    );
    let mut written = Vec::new();
    for (page_cmd, is_main) in pages {
        let man = clap_mangen::Man::new(page_cmd)
            .source(format!("linegate {version}"))
            .manual("linegate manual");
        let path = dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff)
            .with_context(|| format!("cannot render {}", path.display()))?;
        if is_main {
            roff.extend_from_slice(MAIN_PAGE_TAIL.as_bytes());
        }
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
