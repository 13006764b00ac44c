//! The checked-in OpenAPI document, `openapi/tern.json` at the repository root, is exactly
//! what the code generates (`tern_admin::openapi_json_text()`, served at
//! `/api/v1/openapi.json`): a change to a route, a DTO or a response declaration that is not
//! reflected in the file fails here, so the file in review always says what the API does.
//!
//! To refresh the file after an intended change, run
//!
//! ```text
//! TERN_TEST_UPDATE_OPENAPI=1 cargo test -p tern-admin --test openapi
//! ```
//!
//! and commit `openapi/tern.json` with the change. The variable is read by this test only.
//! It is named under the `TERN_TEST_` prefix on purpose: `tern` refuses unknown `TERN_*`
//! environment variables at start, and `TERN_TEST_*` is one of the prefixes it reserves for
//! tooling (`TOOLING_PREFIXES` in crates/tern-server/src/config.rs), so a shell that still
//! has it exported can start a broker.

use std::path::PathBuf;

/// The variable that makes the test write the file instead of failing.
const UPDATE_ENV: &str = "TERN_TEST_UPDATE_OPENAPI";

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/tern.json")
}

/// The first line where `file` and `generated` differ (1-based), with both versions of it.
fn first_difference(file: &str, generated: &str) -> Option<(usize, String, String)> {
    let show = |line: Option<&str>| line.map_or_else(|| "(end of file)".to_string(), str::to_string);
    let mut old_lines = file.lines();
    let mut new_lines = generated.lines();
    let mut number = 0;
    loop {
        number += 1;
        match (old_lines.next(), new_lines.next()) {
            (None, None) => return None,
            (was, now) if was == now => {}
            (was, now) => return Some((number, show(was), show(now))),
        }
    }
}

#[test]
fn checked_in_openapi_document_is_up_to_date() {
    let generated = tern_admin::openapi_json_text();
    let path = checked_in_path();
    if std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if on_disk == generated {
        return;
    }
    let at = match first_difference(&on_disk, &generated) {
        Some((line, file, code)) => {
            format!(
                "first difference at line {line}:\n  openapi/tern.json: {file}\n  generated:         {code}"
            )
        }
        None => "they differ in line endings or the final newline".to_string(),
    };
    panic!(
        "openapi/tern.json is missing or out of date with the code ({at}).\n\
         Refresh it with `{UPDATE_ENV}=1 cargo test -p tern-admin --test openapi`, review the \
         diff, and commit it with the change.",
    );
}

/// The file is the document the API serves, not merely similar text: valid JSON, OpenAPI
/// 3.1, with the paths the router has.
#[test]
fn generated_document_is_openapi_3_1() {
    let doc: serde_json::Value = serde_json::from_str(&tern_admin::openapi_json_text()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert!(doc["paths"]["/api/v1/devices"]["post"].is_object());
}
