//! Every option of every command of `hrl-agent`, `hrl-shipper` and `hrl`
//! has help text: `--help` is where an operator looks first.

use std::process::Command;

fn help(bin: &str, sub: &[&str]) -> String {
    let o = Command::new(hrl_testkit::bin(bin))
        .args(sub)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "{bin} {sub:?} --help failed");
    String::from_utf8(o.stdout).unwrap()
}

/// The subcommands a `--help` lists (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("Commands:") {
            inside = true;
        } else if inside && !l.starts_with("  ") {
            break;
        } else if inside {
            let name = l.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name != "help" && l.starts_with("  ") && !l.starts_with("   ") {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Options of a `--help` text that have no description.
fn undocumented(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let is_flag = |l: &str| {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        (2..=6).contains(&indent) && (t.starts_with("--") || (t.starts_with('-') && t.chars().nth(2) == Some(',')))
    };
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !is_flag(l) {
            continue;
        }
        let t = l.trim_start();
        // The flag spec ends at the first run of two spaces.
        let same_line = t.split_once("  ").is_some_and(|(_, rest)| !rest.trim().is_empty());
        let next_line = lines
            .get(i + 1)
            .is_some_and(|n| !is_flag(n) && n.starts_with("          ") && !n.trim().is_empty());
        if !same_line && !next_line {
            out.push(t.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
        }
    }
    out
}

fn every_option_of_every_command_has_help_text() {
    let mut missing = Vec::new();
    for bin in ["hrl-agent", "hrl-shipper", "hrl"] {
        let top = help(bin, &[]);
        for o in undocumented(&top) {
            missing.push(format!("{bin} {o}"));
        }
        let subs = subcommands(&top);
        assert!(subs.len() >= 4, "{bin}: found the commands {subs:?}");
        for s in subs {
            for o in undocumented(&help(bin, &[&s])) {
                missing.push(format!("{bin} {s} {o}"));
            }
        }
    }
    assert!(missing.is_empty(), "options without help text:\n{}", missing.join("\n"));
}

fn the_checker_finds_an_undocumented_option() {
    let text = "Options:\n      --documented <X>  says what\n      --bare <Y>\n      --long\n          on the next line\n  -h, --help  Print help\n";
    assert_eq!(undocumented(text), vec!["--bare <Y>"]);
}

hrl_testkit::tests!(Nothing: [every_option_of_every_command_has_help_text, the_checker_finds_an_undocumented_option]);
