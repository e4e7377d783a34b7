//! The checked-in CRD is what the types generate; CEL rules accept the samples and refuse
//! the bad ones with their messages (evaluated client-side by kube's CEL engine, the
//! same expressions the API server runs).

use kube::CustomResourceExt;
use logstream_crds::{LogStream, crd_yaml};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The CRD under crds/ and the copy the Helm chart ships.
#[test]
fn checked_in_crds_are_current() {
    let want = crd_yaml();
    for rel in [
        "crds/logstream.dev_logstreams.yaml",
        "charts/logstream/crds/logstream.dev_logstreams.yaml",
    ] {
        let path = repo().join(rel);
        if std::env::var_os("LOGSTREAM_BLESS").is_some() {
            std::fs::write(&path, &want).expect("write CRD");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run `LOGSTREAM_BLESS=1 cargo test -p logstream-crds`",
            path.display()
        );
    }
}

#[test]
fn crd_has_status_subresource_printer_columns_and_rules() {
    let crd = LogStream::crd();
    let v = &crd.spec.versions[0];
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Tenant", "Ready", "Viewers", "Age"]);
    let yaml = crd_yaml();
    assert!(yaml.contains("x-kubernetes-validations"));
    assert!(
        yaml.contains("default: 720h"),
        "retention default in the schema"
    );
}

fn load(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("sample");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("samples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn schema() -> serde_json::Value {
    let crd = LogStream::crd();
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

fn cel(value: &serde_json::Value, old: Option<&serde_json::Value>) -> Result<(), String> {
    kube::core::cel::Validator::new()
        .validate(&schema(), value, old)
        .map_err(|e| e.to_string())
}

#[test]
fn samples_pass_cel_and_deserialise_and_check() {
    let samples = yaml_files(&repo().join("e2e/samples"));
    assert!(samples.len() >= 3, "sample LogStreams in e2e/samples");
    for path in samples {
        let value = load(&path);
        cel(&value, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ls: LogStream =
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ls.spec
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Each bad sample names, in a `# refused: <text>` first line, the message it must get
/// from CEL (`cel:`) or from `LogStreamSpec::check` (`check:`). Samples refused by the
/// structural schema (`schema:`) are checked by `e2e/validate.py`.
#[test]
fn bad_samples_are_refused_with_their_message() {
    let mut cel_or_check = 0;
    for path in yaml_files(&repo().join("e2e/samples/bad")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let expect = first.strip_prefix("# refused: ").unwrap_or_else(|| {
            panic!(
                "{}: first line must be `# refused: cel|check|schema: <message>`",
                path.display()
            )
        });
        let value = load(&path);
        let (kind, message) = expect.split_once(": ").expect("kind: message");
        let got = match kind {
            "cel" => cel(&value, None).expect_err("CEL must refuse"),
            "check" => {
                cel(&value, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let ls: LogStream = serde_json::from_value(value).unwrap();
                ls.spec.check().expect_err("check must refuse")
            }
            "schema" => continue,
            other => panic!("{}: unknown kind {other}", path.display()),
        };
        cel_or_check += 1;
        assert!(
            got.contains(message),
            "{}: got {got:?}, want {message:?}",
            path.display()
        );
    }
    assert!(cel_or_check >= 5);
}

#[test]
fn tenant_is_immutable() {
    let old = load(&repo().join("e2e/samples/minimal.yaml"));
    let mut new = old.clone();
    new["spec"]["tenant"] = "other".into();
    let err = cel(&new, Some(&old)).expect_err("tenant change refused");
    assert!(err.contains("spec.tenant is immutable"), "{err}");
    cel(&old, Some(&old)).expect("unchanged tenant accepted");
}
