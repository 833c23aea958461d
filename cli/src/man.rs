//! `man/mqctl.1`, generated from the clap definitions: clap's page for `mqctl` itself, then
//! one section per subcommand with its usage, description, examples and options. A test
//! regenerates it and compares; `MQD_UPDATE_MAN=1` rewrites it.

use clap::CommandFactory;

use crate::args::Cli;

fn esc(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

/// Renders help text: paragraphs as prose, indented lines (examples) verbatim.
fn text(out: &mut String, s: &str) {
    let mut verbatim = false;
    for line in s.lines() {
        let indented = line.starts_with("  ");
        if indented && !verbatim {
            out.push_str(".PP\n.nf\n.RS 4\n");
            verbatim = true;
        } else if !indented && verbatim {
            out.push_str(".RE\n.fi\n");
            verbatim = false;
        }
        if line.trim().is_empty() {
            if !verbatim {
                out.push_str(".PP\n");
            }
            continue;
        }
        out.push_str(&esc(if indented { line.trim_start() } else { line }));
        out.push('\n');
    }
    if verbatim {
        out.push_str(".RE\n.fi\n");
    }
}

fn options(out: &mut String, cmd: &clap::Command) {
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| {
            !a.is_hide_set()
                && !a.is_global_set()
                && a.get_id() != "help"
                && a.get_id() != "version"
        })
        .collect();
    if args.is_empty() {
        return;
    }
    out.push_str(".PP\n\\fBArguments and options:\\fR\n");
    for a in args {
        let value = a
            .get_value_names()
            .map(|v| {
                v.iter()
                    .map(|n| format!("<{n}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| format!("<{}>", a.get_id().as_str().to_uppercase()));
        let head = if a.is_positional() {
            format!("\\fI{}\\fR", esc(&value))
        } else {
            let mut names = Vec::new();
            if let Some(s) = a.get_short() {
                names.push(format!("\\fB\\-{s}\\fR"));
            }
            if let Some(l) = a.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
            }
            let takes = a.get_num_args().is_some_and(|n| n.takes_values());
            if takes {
                format!("{} \\fI{}\\fR", names.join(", "), esc(&value))
            } else {
                names.join(", ")
            }
        };
        out.push_str(&format!(".TP\n{head}\n"));
        let help = a
            .get_long_help()
            .or(a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        text(out, &help);
        let defaults: Vec<_> = a
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && !defaults.iter().all(|d| d == "false") {
            out.push_str(&format!("[default: {}]\n", esc(&defaults.join(", "))));
        }
        let possible: Vec<_> = a
            .get_possible_values()
            .iter()
            .map(|p| p.get_name().to_string())
            .collect();
        if !possible.is_empty() && !a.is_positional() && possible != ["true", "false"] {
            out.push_str(&format!(
                "[possible values: {}]\n",
                esc(&possible.join(", "))
            ));
        }
    }
}

fn subcommands(out: &mut String, cmd: &clap::Command) {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        if sub.has_subcommands() {
            subcommands(out, sub);
            continue;
        }
        let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        out.push_str(&format!(".SS \"{}\"\n", esc(&name)));
        let usage = sub.clone().render_usage().to_string();
        out.push_str(&format!(
            ".nf\n{}\n.fi\n",
            esc(usage.trim_start_matches("Usage: "))
        ));
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        out.push_str(".PP\n");
        text(out, &about);
        options(out, sub);
    }
}

/// The whole page.
pub fn page() -> Vec<u8> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("mqctl {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    // clap_mangen's own subcommand section points at one page per subcommand; this page
    // holds them all instead, in COMMANDS below.
    man.render_title(&mut out).expect("render");
    man.render_name_section(&mut out).expect("render");
    man.render_synopsis_section(&mut out).expect("render");
    man.render_description_section(&mut out).expect("render");
    man.render_options_section(&mut out).expect("render");
    let mut s = String::from(".SH COMMANDS\n");
    subcommands(&mut s, &cmd);
    s.push_str(".SH \"EXIT STATUS AND CREDENTIALS\"\n");
    text(&mut s, crate::args::EXIT_CODES);
    s.push_str(".SH SEE ALSO\n.BR mqd (8),\n.BR mqd.toml (5)\n");
    out.extend_from_slice(s.as_bytes());
    out
}

#[test]
fn mqctl_page_in_sync() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../man/mqctl.1");
    let want = page();
    if std::env::var_os("MQD_UPDATE_MAN").is_some() {
        std::fs::write(&path, &want).expect("write man/mqctl.1");
        return;
    }
    let have = std::fs::read(&path).unwrap_or_default();
    assert!(
        have == want,
        "man/mqctl.1 is out of date with the clap definitions; regenerate it with\n  MQD_UPDATE_MAN=1 cargo nextest run --workspace -E 'test(in_sync)'"
    );
}

#[test]
fn every_subcommand_is_in_the_page() {
    let page = String::from_utf8(page()).unwrap();
    let mut cmd = Cli::command();
    cmd.build();
    fn walk(cmd: &clap::Command, page: &str) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            if sub.has_subcommands() {
                walk(sub, page);
            } else {
                let name = esc(sub.get_bin_name().unwrap_or_default());
                assert!(
                    page.contains(&format!(".SS \"{name}\"")),
                    "{name} missing from mqctl.1"
                );
            }
        }
    }
    walk(&cmd, &page);
}
