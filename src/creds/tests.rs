//! The credential store's rules: each file form, which source answers first, namespace keys, host matching for the clouds, and that no secret is ever shown.

use super::*;
use std::path::Path;

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auths(host: &str, user_pw: &str) -> String {
    format!(r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#, b64(user_pw))
}

fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

fn login(store: &Store, host: &str, repo: Option<&str>) -> Option<(String, String)> {
    store
        .lookup(host, repo)
        .unwrap()
        .map(|c| (c.username, c.secret))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn every_form_is_read_and_the_first_source_answers() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let docker = d.join("docker");
    write(
        &docker,
        "config.json",
        &auths("a.example", "from:pw-config"),
    );
    // A kubernetes.io/dockerconfigjson Secret mounted as the directory, and a legacy one.
    write(
        &docker,
        ".dockerconfigjson",
        &auths("b.example", "from:pw-secret"),
    );
    write(
        &docker,
        ".dockercfg",
        &format!(
            r#"{{"https://c.example":{{"auth":"{}","email":"x@y"}}}}"#,
            b64("from:pw-dockercfg")
        ),
    );
    let authfile = write(
        d,
        "auth.json",
        &format!(
            r#"{{"auths":{{"a.example":{{"auth":"{}"}},"d.example":{{"auth":"{}"}},"d.example/team/app":{{"auth":"{}"}}}}}}"#,
            b64("from:pw-authfile"),
            b64("from:pw-authfile-host"),
            b64("from:pw-authfile-repo")
        ),
    );
    let env = env_of(vec![
        ("DOCKER_AUTH_CONFIG", auths("e.example", "from:pw-variable")),
        ("DOCKER_CONFIG", docker.display().to_string()),
        ("REGISTRY_AUTH_FILE", authfile),
        ("HOME", d.join("home").display().to_string()),
    ]);
    let sources = locate(&env);
    check(&sources).unwrap();
    let s = Store::open(&sources, BTreeMap::new()).unwrap();
    let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
    assert_eq!(login(&s, "e.example", None), pair("from", "pw-variable"));
    // The Docker config comes before auth.json for the same registry.
    assert_eq!(login(&s, "a.example", None), pair("from", "pw-config"));
    assert_eq!(login(&s, "b.example", None), pair("from", "pw-secret"));
    assert_eq!(login(&s, "c.example", None), pair("from", "pw-dockercfg"));
    // containers-auth.json(5): the most specific key wins.
    assert_eq!(
        login(&s, "d.example", Some("team/app")),
        pair("from", "pw-authfile-repo")
    );
    assert_eq!(
        login(&s, "d.example", Some("team/other")),
        pair("from", "pw-authfile-host")
    );
    assert_eq!(
        login(&s, "d.example", None),
        pair("from", "pw-authfile-host")
    );
    assert_eq!(login(&s, "none.example", None), None);
    // d.example's token requests are private even where the host has no login of its own.
    use crate::session::credentials::CredentialSource as _;
    assert!(s.has_repository_logins("d.example"));
    assert!(!s.has_repository_logins("a.example"));
    assert_eq!(
        s.answering("e.example", None).as_deref(),
        Some("DOCKER_AUTH_CONFIG")
    );
    assert!(s
        .answering("c.example", None)
        .unwrap()
        .ends_with("docker/.dockercfg"));
    let shown = s.describe() + &format!("{:?}", s.registries()) + &format!("{sources:?}");
    for secret in ["pw-", &b64("from:pw-variable")] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("e.example"), "{shown}");
}

#[test]
fn docker_config_may_name_the_file_itself() {
    let t = tempfile::tempdir().unwrap();
    let f = write(
        t.path(),
        "secret/.dockerconfigjson",
        &auths("r.example:5000", "u:p"),
    );
    let s = Store::open(
        &locate(&env_of(vec![("DOCKER_CONFIG", f)])),
        BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        login(&s, "r.example:5000", None),
        Some(("u".into(), "p".into()))
    );
}

#[test]
fn a_docker_auth_config_that_is_not_json_is_refused_in_one_line_without_its_value() {
    let env = env_of(vec![("DOCKER_AUTH_CONFIG", "{\"auths\": hunter2".into())]);
    let e = check(&locate(&env)).unwrap_err().to_string();
    assert!(
        e.starts_with("DOCKER_AUTH_CONFIG is not a usable registry login file: fix it"),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
    let env = env_of(vec![("DOCKER_AUTH_CONFIG", "[1]".into())]);
    assert!(check(&locate(&env)).is_err());
}

#[test]
fn config_json_with_other_settings_only_is_no_logins() {
    let c = DockerConfig::parse(br#"{"currentContext":"x","proxies":{}}"#).unwrap();
    assert!(c.known().is_empty());
    let legacy = DockerConfig::parse(br#"{"reg.example":{"auth":"dTpw","email":"a@b"}}"#).unwrap();
    assert_eq!(legacy.known(), ["reg.example"]);
    assert!(DockerConfig::parse(b"{\"auths\":[]}").is_err());
    // A wrongly typed field is named, its value (a password, maybe) is not.
    let e = DockerConfig::parse(br#"{"auths":"hunter2-pw"}"#).unwrap_err();
    assert!(
        e.starts_with("not a Docker config") && !e.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn default_locations_without_variables() {
    let env = env_of(vec![
        ("HOME", "/home/u".into()),
        ("XDG_RUNTIME_DIR", "/run/user/1000".into()),
    ]);
    let labels: Vec<String> = locate(&env).inputs.iter().map(Input::label).collect();
    assert_eq!(
        labels,
        [
            "the Docker config /home/u/.docker/config.json",
            "the legacy Docker config /home/u/.dockercfg",
            "containers' auth.json /run/user/1000/containers/auth.json",
            "containers' auth.json /home/u/.config/containers/auth.json",
        ]
    );
}

#[test]
fn cloud_registries_by_host() {
    use cloud::Cloud;
    assert!(
        matches!(Cloud::for_host("123456789012.dkr.ecr.us-east-1.amazonaws.com:5000"), Some(Cloud::Aws { region, .. }) if region == "us-east-1")
    );
    assert_eq!(Cloud::for_host("gcr.io"), Some(Cloud::Gcp));
    assert_eq!(Cloud::for_host("eu.gcr.io"), Some(Cloud::Gcp));
    assert_eq!(
        Cloud::for_host("europe-west1-docker.pkg.dev"),
        Some(Cloud::Gcp)
    );
    assert_eq!(Cloud::for_host("myreg.azurecr.io"), Some(Cloud::Azure));
    assert_eq!(Cloud::for_host("azurecr.io"), None);
    assert_eq!(Cloud::for_host("notgcr.io"), None);
    assert_eq!(Cloud::for_host("docker.io"), None);
}

#[test]
fn a_file_login_beats_the_cloud_and_no_identity_is_anonymous() {
    let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    let env = env_of(vec![
        ("DOCKER_AUTH_CONFIG", auths(host, "AWS:from-file")),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
        ("AWS_SECRET_ACCESS_KEY", "not-shown-anywhere".into()),
    ]);
    let s = Store::open(&locate(&env), BTreeMap::new()).unwrap();
    assert_eq!(
        login(&s, host, None),
        Some(("AWS".into(), "from-file".into()))
    );
    assert!(!format!("{:?} {}", locate(&env), s.describe()).contains("not-shown-anywhere"));
    assert!(
        s.describe().contains("access key AKIDEXAMPLE"),
        "{}",
        s.describe()
    );
    // No identity set up: ECR is asked anonymously, as before.
    let s = Store::open(&locate(&env_of(vec![])), BTreeMap::new()).unwrap();
    assert_eq!(
        login(&s, "123456789012.dkr.ecr.eu-west-1.amazonaws.com", None),
        None
    );
    assert_eq!(login(&s, "myreg.azurecr.io", None), None);
}

#[test]
fn secrets_found_are_masked_in_error_lines() {
    let env = env_of(vec![(
        "DOCKER_AUTH_CONFIG",
        auths("m.example", "u:masked-secret-42"),
    )]);
    let s = Store::open(&locate(&env), BTreeMap::new()).unwrap();
    login(&s, "m.example", None);
    let line = crate::progress::mask::masked_error_line("the daemon said masked-secret-42");
    assert_eq!(line, "the daemon said ****");
}

#[test]
fn a_default_store_that_knows_nothing_lets_the_next_source_answer() {
    let t = tempfile::tempdir().unwrap();
    // A helper on PATH that knows no server, named as the config's credsStore.
    let helper = write(
        t.path(),
        "bin/docker-credential-empty",
        "#!/bin/sh\nread server\necho 'credentials not found in native keychain'\nexit 1\n",
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let docker = write(t.path(), "docker/config.json", r#"{"credsStore":"empty"}"#);
    let authfile = write(
        t.path(),
        "auth.json",
        &auths("r.example", "u:from-authfile"),
    );
    // Prepended, so every other test still finds what it runs.
    let path = format!(
        "{}:{}",
        t.path().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", &path);
    let env = env_of(vec![
        (
            "DOCKER_CONFIG",
            Path::new(&docker).parent().unwrap().display().to_string(),
        ),
        ("REGISTRY_AUTH_FILE", authfile),
    ]);
    let s = Store::open(&locate(&env), BTreeMap::new()).unwrap();
    assert_eq!(
        login(&s, "r.example", None),
        Some(("u".into(), "from-authfile".into()))
    );
    assert!(s
        .answering("r.example", None)
        .unwrap()
        .starts_with("REGISTRY_AUTH_FILE"));
}
