//! `sockets`: the model read from the table, and every located error.

use super::*;
use crate::config::{ListenAddr, SocketSpec};

#[test]
fn sockets_are_read_in_order() {
    let config = ok("[group.w]\ncommand = [\"PROG\"]\nsockets = [\
         { name = \"http\", listen = \"tcp://0.0.0.0:8080\" }, \
         { name = \"v6\", listen = \"tcp://[::]:80\" }, \
         { name = \"local\", listen = \"tcp://localhost:81\" }, \
         { name = \"admin\", listen = \"unix:///run/app.sock\", mode = \"0660\" }]\n");
    let w = &config.groups[&GroupName::new("w").unwrap()];
    let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
    assert_eq!(
        w.sockets,
        [
            SocketSpec {
                name: "http".into(),
                listen: tcp("0.0.0.0:8080"),
                mode: None
            },
            SocketSpec {
                name: "v6".into(),
                listen: tcp("[::]:80"),
                mode: None
            },
            SocketSpec {
                name: "local".into(),
                listen: tcp("127.0.0.1:81"),
                mode: None
            },
            SocketSpec {
                name: "admin".into(),
                listen: ListenAddr::Unix("/run/app.sock".into()),
                mode: Some(0o660)
            },
        ]
    );
    assert!(
        ok("[group.w]\ncommand = [\"PROG\"]\n").groups[&GroupName::new("w").unwrap()]
            .sockets
            .is_empty()
    );
}

#[test]
fn bad_entries_are_located_errors() {
    let group = |sockets: &str| format!("[group.w]\ncommand = [\"PROG\"]\nsockets = [{sockets}]\n");
    let cases = [
        (
            "{ name = \"a:b\", listen = \"tcp://1.2.3.4:80\" }",
            "/cfg/a.toml:3:21: error: `sockets[0].name` in [group.w] cannot contain `:` (it separates the names in LISTEN_FDNAMES)",
        ),
        (
            "{ name = \"\", listen = \"tcp://1.2.3.4:80\" }",
            "/cfg/a.toml:3:21: error: `sockets[0].name` in [group.w] cannot be empty",
        ),
        (
            "{ name = \"a\", listen = \"tcp://example.com:80\" }",
            "/cfg/a.toml:3:35: error: `sockets[0].listen` in [group.w] `tcp://example.com:80` is not `tcp://HOST:PORT` with an IP address or `localhost` as HOST",
        ),
        (
            "{ name = \"a\", listen = \"unix://run/a.sock\" }",
            "/cfg/a.toml:3:35: error: `sockets[0].listen` in [group.w] `unix://run/a.sock` is not an absolute path",
        ),
        (
            "{ name = \"a\", listen = \"udp://1.2.3.4:80\" }",
            "/cfg/a.toml:3:35: error: `sockets[0].listen` in [group.w] `udp://1.2.3.4:80` is not a listen address",
        ),
        (
            "{ name = \"a\", listen = \"tcp://1.2.3.4:0\" }",
            "/cfg/a.toml:3:35: error: `sockets[0].listen` in [group.w] `tcp://1.2.3.4:0` has port 0",
        ),
        (
            "{ name = \"a\", listen = \"tcp://1.2.3.4:80\", mode = \"0600\" }",
            "/cfg/a.toml:3:62: error: `sockets[0].mode` in [group.w] applies only to unix sockets",
        ),
        (
            "{ name = \"a\", listen = \"unix:///a\", mode = \"rw\" }",
            "/cfg/a.toml:3:55: error: `sockets[0].mode` in [group.w] `rw` is not an octal file mode",
        ),
        (
            "{ listen = \"tcp://1.2.3.4:80\" }",
            "/cfg/a.toml:3:12: error: `sockets[0]` in [group.w] has no `name`",
        ),
        (
            "{ name = \"a\", listen = \"tcp://1.2.3.4:80\", port = 1 }",
            "/cfg/a.toml:3:55: error: unknown key `port` in `sockets[0]` in [group.w]",
        ),
        (
            "{ name = \"a\", listen = \"tcp://1.2.3.4:80\" }, { name = \"a\", listen = \"tcp://1.2.3.4:81\" }",
            "/cfg/a.toml:3:57: error: socket name `a` is used twice in `sockets` in [group.w]",
        ),
        (
            "{ name = \"a\", listen = \"tcp://1.2.3.4:80\" }, { name = \"b\", listen = \"tcp://1.2.3.4:80\" }",
            "/cfg/a.toml:3:80: error: address `tcp://1.2.3.4:80` is listed twice in `sockets` in [group.w]",
        ),
    ];
    for (sockets, expected) in cases {
        assert_eq!(errors(&group(sockets)), [expected], "{sockets}");
    }
}

#[test]
fn an_address_of_two_groups_is_an_error_naming_both_places() {
    let result = check(&[
        (
            "a.toml",
            "[group.a]\ncommand = [\"PROG\"]\nsockets = [{ name = \"h\", listen = \"tcp://0.0.0.0:80\" }]\n",
        ),
        (
            "b.toml",
            "[group.b]\ncommand = [\"PROG\"]\nsockets = [{ name = \"h\", listen = \"tcp://0.0.0.0:80\" }]\n",
        ),
    ]);
    assert_eq!(
        lines(result),
        [
            "/cfg/b.toml:3:35: error: address `tcp://0.0.0.0:80` of group `b` is already a socket of group `a` (/cfg/a.toml:3:35)"
        ]
    );
}

#[test]
fn python_functions_take_sockets_under_every_method() {
    for method in ["spawn", "fork", "forkserver"] {
        let text = format!(
            "[group.w]\npython = \"m:f\"\nstart_method = \"{method}\"\n\
             sockets = [{{ name = \"h\", listen = \"tcp://0.0.0.0:80\" }}]\n"
        );
        assert!(check_one(&text).is_ok(), "{method}");
    }
}
