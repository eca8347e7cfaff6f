//! `bindery certify`: the stock binary certifies every module it links, and
//! a binary with a module that breaks its contract fails certification.

use std::process::Command;

use bindery_classes::{ParseError, Parser};

#[test]
fn the_stock_server_certifies_every_module_it_links() {
    let out = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .args(["certify", "--json"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 17, "{reports:?}");
    for r in reports {
        let cases = r["cases"].as_array().unwrap();
        assert!(!cases.is_empty(), "{} was held to no case", r["module"]);
        for c in cases {
            assert!(
                c["failure"].is_null(),
                "{} failed {}: {}",
                r["module"],
                c["case"],
                c["failure"]
            );
        }
    }
    assert!(out.status.success());
}

/// Claims `application/json` and accepts anything: breaks the contract.
struct Lax;

impl Parser for Lax {
    fn validate(&self, _: &str, _: &[u8]) -> Result<(), ParseError> {
        Ok(())
    }
    fn default_types(&self) -> &'static [&'static str] {
        &["application/json"]
    }
}

fn lax_main(
    reg: &mut bindery::Registrar<'_, bindery_classes::class::Parser>,
) -> Result<(), bindery::BoxError> {
    bindery_classes::parser::register(reg, &["application/json"], |_| Ok(Lax));
    Ok(())
}

bindery::module! {
    class: bindery_classes::class::Parser,
    name: "lax",
    description: "accepts invalid JSON: must fail certification",
    main: lax_main,
}

#[test]
fn a_module_that_breaks_its_contract_fails_certification() {
    static LISTED: &[&bindery::ModuleDescriptor] = &[&MODULE];
    let passed = bindery_server::certify::certify(bindery::ModuleList::new(LISTED), true).unwrap();
    assert!(!passed, "parser.lax passed certification");
}

#[test]
fn the_table_ends_with_the_summary_on_a_line_of_its_own() {
    // stdout and stderr into one file, as on a terminal.
    let path = std::env::temp_dir().join(format!("bindery-certify-{}.out", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_bindery"))
        .arg("certify")
        .env_remove("RUST_LOG")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    let out = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let n = lines.len();
    assert!(n > 2 && out.ends_with('\n'), "{out}");
    assert_eq!(lines[n - 2], "", "an empty line before the summary: {out}");
    let summary = lines[n - 1];
    assert!(
        summary.starts_with("certify: 17 modules, ") && summary.ends_with(" passed, 0 failed"),
        "{out}"
    );
}
