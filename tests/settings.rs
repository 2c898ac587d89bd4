//! One list of settings: the README's configuration table names exactly the
//! variables `orchestrator::settings::Settings` reads, `consumer --help`
//! lists each of them without printing a secret's value, and a value that
//! does not parse stops the binary naming its variable.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use orchestrator::settings::variables;

/// The variables named in the first column of the README's `## Configuration` table.
fn readme_variables() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("\n## Configuration\n").nth(1).expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let mut names = BTreeSet::new();
    for row in section.lines().filter(|line| line.starts_with("| `")) {
        let first_cell = row.split('|').nth(1).unwrap();
        for name in first_cell.split('`').skip(1).step_by(2) {
            // `KAFKA_PROPERTY_<NAME>` is a family of pass-throughs, not one variable.
            if !name.contains('<') {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn the_readme_table_lists_exactly_the_variables_the_settings_read() {
    let documented = readme_variables();
    let read: BTreeSet<String> = variables().into_iter().map(|(name, _)| name).collect();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(undocumented.is_empty(), "read but not in the README's table: {undocumented:?}");
    assert!(unread.is_empty(), "in the README's table but read by nothing: {unread:?}");
}

#[test]
fn help_lists_every_variable_and_never_a_secret() {
    let output = Command::new(common::consumer_binary())
        .arg("--help")
        .env("WHATSAPP_TOKEN", "token-that-must-not-print")
        .env("KAFKA_SASL_PASSWORD", "password-that-must-not-print")
        .env("MAX_RETRIES", "9")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (name, secret) in variables() {
        assert!(help.contains(&format!("[env: {name}")), "{name} not in --help:\n{help}");
        if secret {
            assert!(!help.contains(&format!("[env: {name}=")), "{name}'s value shown:\n{help}");
        }
    }
    assert!(!help.contains("must-not-print"), "{help}");
    // A non-secret's value in effect is shown beside its variable.
    assert!(help.contains("[env: MAX_RETRIES=9]"), "{help}");
}

#[test]
fn a_value_that_does_not_parse_stops_the_binary_naming_its_variable() {
    for (name, value) in [("MAX_RETRIES", "three"), ("HTTP_ADDR", "nowhere"), ("KAFKA_SECURITY_PROTOCOL", "tin_can")] {
        let dir = tempdir();
        let output = Command::new(common::consumer_binary())
            .env(name, value)
            .env("DATABASE_URL", format!("sqlite://{}/db.sqlite?mode=rwc", dir.display()))
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
            .env("HTTP_ADDR", if name == "HTTP_ADDR" { value } else { "127.0.0.1:0" })
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} was accepted:\n{stderr}");
        assert!(stderr.contains(name), "{name}={value}: the error does not name it:\n{stderr}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("settings-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
