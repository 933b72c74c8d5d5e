//! Every setting of gunicorn 26 (`gunicorn/config.py`, 119 of them) and what rwsgi does
//! with it. The README's settings table is checked against this list and this list
//! against rwsgi's flags (`tests/test_gunicorn.py`, the unit tests below).

/// What rwsgi does with one gunicorn setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// rwsgi's setting of this key does it, with the same flag spelling.
    Supported(&'static str),
    /// rwsgi's setting of this key does it under another name (the note says how).
    Mapped(&'static str, &'static str),
    /// A server hook rwsgi calls in each worker: a config file holding one becomes the
    /// `--hooks` module.
    WorkerHook,
    /// Accepted and ignored, with one warning saying why: it changes nothing a client or
    /// the application sees under rwsgi.
    Ignored(&'static str),
    /// On the command line, refused with this sentence (why, and what to use instead):
    /// rwsgi cannot do what it asks. In a config file, the same sentence as a warning.
    Refused(&'static str),
}

/// How gunicorn's command line spells a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Config file only.
    None,
    /// A flag without a value.
    Switch(&'static [&'static str]),
    /// A flag taking a value (repeatable ones too).
    Value(&'static [&'static str]),
}

/// One gunicorn setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// gunicorn's name (the config file's).
    pub name: &'static str,
    /// Its command-line spellings.
    pub flag: Flag,
    /// What rwsgi does with it.
    pub status: Status,
}

use Flag::{None as FileOnly, Switch, Value};
use Status::{Ignored, Mapped, Refused, Supported, WorkerHook};

const fn s(name: &'static str, flag: Flag, status: Status) -> Setting {
    Setting { name, flag, status }
}

const MASTER_HOOK: Status = Ignored(
    "gunicorn runs this hook in its master, and rwsgi's master runs no Python; \
     the worker hooks (post_fork, post_worker_init, pre_request, post_request, \
     worker_exit, worker_abort) are called",
);
const ASGI: Status = Ignored("rwsgi's -k asgi has no such setting yet; it changes nothing");
const NO_SYSLOG: Status = Refused(
    "rwsgi does not write to syslog: leave the error log on stderr (journald and \
     container runtimes collect it) or use --error-logfile",
);
const NO_STATSD: Status =
    Refused("rwsgi sends no StatsD metrics: use --metrics-bind ADDRESS for Prometheus metrics");
const NO_PYTHON_LOGGING: Status = Refused(
    "rwsgi's logs are written by rwsgi, not by Python's logging: choose the level with \
     --log-level, the files with --error-logfile and --access-logfile, the access line \
     with --access-log-format (json for structured logs)",
);
const NO_PASTE: Status = Refused(
    "rwsgi does not read PasteDeploy files: name the application as module:callable \
     (a wsgi.py calling paste.deploy.loadapp works)",
);
const STRICT_HTTP: Status = Refused(
    "rwsgi's front tier parses HTTP strictly (RFC 9110/9112) and has no switch to \
     relax it: fix the client, or keep a proxy in front that normalises its requests",
);
const NO_DIRTY: Status = Refused(
    "rwsgi has no dirty-worker pool: run long blocking tasks in a task queue, or give \
     them a second rwsgi with its own --timeout",
);
const DIRTY_HOOK: Status = Ignored("rwsgi has no dirty-worker pool, so this hook never runs");
const HTTP2_FIXED: Status = Ignored(
    "rwsgi always offers HTTP/2 (ALPN over TLS, prior knowledge in cleartext) beside \
     HTTP/1.1, with hyper's limits",
);
const NO_CONTROL: Status =
    Ignored("rwsgi has no control socket: signals (TTIN, TTOU, HUP, USR2, TERM) do its work");

/// gunicorn's settings in the order of its documentation.
pub const SETTINGS: &[Setting] = &[
    // Config File
    s("config", Value(&["-c", "--config"]), Supported("config")),
    s("wsgi_app", FileOnly, Mapped("app", "the APP argument")),
    // Server Socket
    s("bind", Value(&["-b", "--bind"]), Supported("bind")),
    s("backlog", Value(&["--backlog"]), Supported("backlog")),
    // Worker Processes
    s("workers", Value(&["-w", "--workers"]), Supported("workers")),
    s(
        "worker_class",
        Value(&["-k", "--worker-class"]),
        Mapped(
            "worker_class",
            "sync, gthread, gevent and asgi; others are refused",
        ),
    ),
    s("threads", Value(&["--threads"]), Supported("threads")),
    s(
        "worker_connections",
        Value(&["--worker-connections"]),
        Supported("worker_connections"),
    ),
    s(
        "max_requests",
        Value(&["--max-requests"]),
        Supported("max_requests"),
    ),
    s(
        "max_requests_jitter",
        Value(&["--max-requests-jitter"]),
        Supported("max_requests_jitter"),
    ),
    s(
        "timeout",
        Value(&["-t", "--timeout"]),
        Mapped(
            "timeout",
            "a worker silent this long on one request is aborted; its client gets 504",
        ),
    ),
    s(
        "graceful_timeout",
        Value(&["--graceful-timeout"]),
        Supported("graceful_timeout"),
    ),
    s(
        "keepalive",
        Value(&["--keep-alive"]),
        Mapped("keep_alive", "the front tier's idle timeout (default 5)"),
    ),
    s("asgi_loop", Value(&["--asgi-loop"]), Supported("asgi_loop")),
    s(
        "asgi_lifespan",
        Value(&["--asgi-lifespan"]),
        Mapped(
            "lifespan",
            "-k asgi: auto, on or off (`--lifespan` or `--asgi-lifespan`)",
        ),
    ),
    s(
        "asgi_disconnect_grace_period",
        Value(&["--asgi-disconnect-grace-period"]),
        ASGI,
    ),
    s(
        "http_parser",
        Value(&["--http-parser"]),
        Ignored("rwsgi's front tier parses HTTP itself (hyper); no Python parser is involved"),
    ),
    // Security
    s(
        "limit_request_line",
        Value(&["--limit-request-line"]),
        Supported("limit_request_line"),
    ),
    s(
        "limit_request_fields",
        Value(&["--limit-request-fields"]),
        Supported("limit_request_fields"),
    ),
    s(
        "limit_request_field_size",
        Value(&["--limit-request-field_size"]),
        Supported("limit_request_field_size"),
    ),
    // Debugging
    s("reload", Switch(&["--reload"]), Supported("reload")),
    s(
        "reload_engine",
        Value(&["--reload-engine"]),
        Ignored("rwsgi's reloader always uses inotify"),
    ),
    s(
        "reload_extra_files",
        Value(&["--reload-extra-file"]),
        Mapped("reload_extra_file", "same flag; globs allowed"),
    ),
    s(
        "spew",
        Switch(&["--spew"]),
        Refused(
            "rwsgi has no line tracer: run the application under a debugger or `python -m trace`",
        ),
    ),
    s(
        "check_config",
        Switch(&["--check-config"]),
        Mapped("rwsgi check", "the same check"),
    ),
    s(
        "print_config",
        Switch(&["--print-config"]),
        Mapped("rwsgi config", "prints each value and where it came from"),
    ),
    // Server Mechanics
    s(
        "preload_app",
        Switch(&["--preload"]),
        Mapped("preload", "same flag"),
    ),
    s(
        "sendfile",
        Switch(&["--no-sendfile"]),
        Ignored("the front tier sends wsgi.file_wrapper files and static files itself"),
    ),
    s(
        "reuse_port",
        Switch(&["--reuse-port"]),
        Ignored("the master binds each address once and every front-tier thread accepts on it"),
    ),
    s("chdir", Value(&["--chdir"]), Supported("chdir")),
    s("daemon", Switch(&["-D", "--daemon"]), Supported("daemon")),
    s(
        "raw_env",
        Value(&["-e", "--env"]),
        Mapped("env", "same flag"),
    ),
    s(
        "pidfile",
        Value(&["-p", "--pid"]),
        Mapped("pid", "same flag"),
    ),
    s(
        "worker_tmp_dir",
        Value(&["--worker-tmp-dir"]),
        Ignored("no heartbeat files are needed: workers stamp a shared-memory scoreboard"),
    ),
    s("user", Value(&["-u", "--user"]), Supported("user")),
    s("group", Value(&["-g", "--group"]), Supported("group")),
    s("umask", Value(&["-m", "--umask"]), Supported("umask")),
    s(
        "initgroups",
        Switch(&["--initgroups"]),
        Refused(
            "rwsgi's workers run with --group and no supplementary groups: give the files \
             the application needs to that group",
        ),
    ),
    s(
        "tmp_upload_dir",
        FileOnly,
        Ignored("request bodies are spooled by the front tier, to $TMPDIR"),
    ),
    s(
        "secure_scheme_headers",
        FileOnly,
        Ignored(
            "rwsgi takes the scheme from X-Forwarded-Proto and Forwarded sent by \
             --forwarded-allow-ips peers; the header names are not configurable",
        ),
    ),
    s(
        "forwarded_allow_ips",
        Value(&["--forwarded-allow-ips"]),
        Supported("forwarded_allow_ips"),
    ),
    s(
        "pythonpath",
        Value(&["--pythonpath"]),
        Supported("pythonpath"),
    ),
    s("paste", Value(&["--paste", "--paster"]), NO_PASTE),
    s(
        "proxy_protocol",
        Value(&["--proxy-protocol"]),
        Refused(
            "rwsgi does not read the PROXY protocol: let the proxy send X-Forwarded-For \
             (or Forwarded) and list it in --forwarded-allow-ips",
        ),
    ),
    s(
        "proxy_allow_ips",
        Value(&["--proxy-allow-from"]),
        Ignored("rwsgi does not read the PROXY protocol (see proxy_protocol)"),
    ),
    s(
        "protocol",
        Value(&["--protocol"]),
        Refused("rwsgi speaks HTTP only: point nginx's proxy_pass at it instead of uwsgi_pass"),
    ),
    s(
        "uwsgi_allow_ips",
        Value(&["--uwsgi-allow-from"]),
        Ignored("rwsgi speaks no uwsgi protocol"),
    ),
    s(
        "raw_paste_global_conf",
        Value(&["--paste-global"]),
        NO_PASTE,
    ),
    s(
        "permit_obsolete_folding",
        Switch(&["--permit-obsolete-folding"]),
        STRICT_HTTP,
    ),
    s(
        "strip_header_spaces",
        Switch(&["--strip-header-spaces"]),
        STRICT_HTTP,
    ),
    s(
        "permit_unconventional_http_method",
        Switch(&["--permit-unconventional-http-method"]),
        STRICT_HTTP,
    ),
    s(
        "permit_unconventional_http_version",
        Switch(&["--permit-unconventional-http-version"]),
        STRICT_HTTP,
    ),
    s(
        "casefold_http_method",
        Switch(&["--casefold-http-method"]),
        STRICT_HTTP,
    ),
    s(
        "forwarder_headers",
        Value(&["--forwarder-headers"]),
        Ignored(
            "rwsgi sets no environ value from request headers other than the X-Forwarded-* \
             and Forwarded ones; SCRIPT_NAME comes from the SCRIPT_NAME variable",
        ),
    ),
    s(
        "header_map",
        Value(&["--header-map"]),
        Ignored("rwsgi always drops header names holding `_` (gunicorn's default, drop)"),
    ),
    s(
        "root_path",
        Value(&["--root-path"]),
        Mapped("root_path", "same flag; WSGI's SCRIPT_NAME too"),
    ),
    // Logging
    s(
        "accesslog",
        Value(&["--access-logfile"]),
        Mapped("access_logfile", "same flag"),
    ),
    s(
        "disable_redirect_access_to_syslog",
        Switch(&["--disable-redirect-access-to-syslog"]),
        Ignored("rwsgi does not write to syslog"),
    ),
    s(
        "access_log_format",
        Value(&["--access-logformat"]),
        Mapped(
            "access_log_format",
            "same atoms; also --access-log-format, and json",
        ),
    ),
    s(
        "errorlog",
        Value(&["--error-logfile", "--log-file"]),
        Mapped("error_logfile", "same flags"),
    ),
    s(
        "loglevel",
        Value(&["--log-level"]),
        Mapped("log_level", "same flag and levels"),
    ),
    s(
        "capture_output",
        Switch(&["--capture-output"]),
        Supported("capture_output"),
    ),
    s(
        "logger_class",
        Value(&["--logger-class"]),
        NO_PYTHON_LOGGING,
    ),
    s("logconfig", Value(&["--log-config"]), NO_PYTHON_LOGGING),
    s("logconfig_dict", FileOnly, NO_PYTHON_LOGGING),
    s(
        "logconfig_json",
        Value(&["--log-config-json"]),
        NO_PYTHON_LOGGING,
    ),
    s("syslog_addr", Value(&["--log-syslog-to"]), NO_SYSLOG),
    s("syslog", Switch(&["--log-syslog"]), NO_SYSLOG),
    s("syslog_prefix", Value(&["--log-syslog-prefix"]), NO_SYSLOG),
    s(
        "syslog_facility",
        Value(&["--log-syslog-facility"]),
        NO_SYSLOG,
    ),
    s(
        "enable_stdio_inheritance",
        Switch(&["-R", "--enable-stdio-inheritance"]),
        Supported("enable_stdio_inheritance"),
    ),
    s("statsd_host", Value(&["--statsd-host"]), NO_STATSD),
    s("dogstatsd_tags", Value(&["--dogstatsd-tags"]), NO_STATSD),
    s("statsd_prefix", Value(&["--statsd-prefix"]), NO_STATSD),
    s(
        "enable_backlog_metric",
        Switch(&["--enable-backlog-metric"]),
        NO_STATSD,
    ),
    // Process Naming
    s(
        "proc_name",
        Value(&["-n", "--name"]),
        Mapped("name", "same flag"),
    ),
    s(
        "default_proc_name",
        FileOnly,
        Ignored("gunicorn's internal fallback; rwsgi's titles use --name, else the APP"),
    ),
    // Server Hooks
    s("on_starting", FileOnly, MASTER_HOOK),
    s("on_reload", FileOnly, MASTER_HOOK),
    s("when_ready", FileOnly, MASTER_HOOK),
    s("pre_fork", FileOnly, MASTER_HOOK),
    s("post_fork", FileOnly, WorkerHook),
    s("post_worker_init", FileOnly, WorkerHook),
    s("worker_int", FileOnly, MASTER_HOOK),
    s("worker_abort", FileOnly, WorkerHook),
    s("pre_exec", FileOnly, MASTER_HOOK),
    s("pre_request", FileOnly, WorkerHook),
    s("post_request", FileOnly, WorkerHook),
    s("child_exit", FileOnly, MASTER_HOOK),
    s("worker_exit", FileOnly, WorkerHook),
    s("nworkers_changed", FileOnly, MASTER_HOOK),
    s("on_exit", FileOnly, MASTER_HOOK),
    s(
        "ssl_context",
        FileOnly,
        Ignored("TLS is rustls in the front tier, not Python's ssl: use --tls (TLS 1.2 and 1.3)"),
    ),
    // SSL
    s(
        "keyfile",
        Value(&["--keyfile"]),
        Mapped("tls_key", "also --tls-key"),
    ),
    s(
        "certfile",
        Value(&["--certfile"]),
        Mapped("tls", "also --tls CERT[:KEY], repeatable for SNI"),
    ),
    s(
        "ssl_version",
        Value(&["--ssl-version"]),
        Ignored("gunicorn ignores it too; rwsgi offers TLS 1.2 and 1.3"),
    ),
    s(
        "cert_reqs",
        Value(&["--cert-reqs"]),
        Refused(
            "rwsgi does not ask for client certificates: terminate mutual TLS in a proxy \
             in front of it",
        ),
    ),
    s(
        "ca_certs",
        Value(&["--ca-certs"]),
        Refused(
            "rwsgi does not verify client certificates: terminate mutual TLS in a proxy \
             in front of it",
        ),
    ),
    s(
        "suppress_ragged_eofs",
        Switch(&["--suppress-ragged-eofs"]),
        Ignored("a TLS connection closed without close_notify is an ordinary end for rwsgi"),
    ),
    s(
        "do_handshake_on_connect",
        Switch(&["--do-handshake-on-connect"]),
        Ignored("the front tier always completes the handshake before reading a request"),
    ),
    s(
        "ciphers",
        Value(&["--ciphers"]),
        Ignored("rustls offers only modern AEAD cipher suites, and they are not configurable"),
    ),
    // HTTP/2
    s("http_protocols", Value(&["--http-protocols"]), HTTP2_FIXED),
    s(
        "http2_cleartext",
        Value(&["--http2-cleartext"]),
        HTTP2_FIXED,
    ),
    s(
        "http2_max_concurrent_streams",
        Value(&["--http2-max-concurrent-streams"]),
        HTTP2_FIXED,
    ),
    s(
        "http2_initial_window_size",
        Value(&["--http2-initial-window-size"]),
        HTTP2_FIXED,
    ),
    s(
        "http2_max_frame_size",
        Value(&["--http2-max-frame-size"]),
        HTTP2_FIXED,
    ),
    s(
        "http2_max_header_list_size",
        Value(&["--http2-max-header-list-size"]),
        HTTP2_FIXED,
    ),
    // Dirty Arbiters and their hooks
    s("dirty_apps", Value(&["--dirty-app"]), NO_DIRTY),
    s("dirty_workers", Value(&["--dirty-workers"]), NO_DIRTY),
    s("dirty_timeout", Value(&["--dirty-timeout"]), NO_DIRTY),
    s("dirty_threads", Value(&["--dirty-threads"]), NO_DIRTY),
    s(
        "dirty_graceful_timeout",
        Value(&["--dirty-graceful-timeout"]),
        NO_DIRTY,
    ),
    s("on_dirty_starting", FileOnly, DIRTY_HOOK),
    s("dirty_post_fork", FileOnly, DIRTY_HOOK),
    s("dirty_worker_init", FileOnly, DIRTY_HOOK),
    s("dirty_worker_exit", FileOnly, DIRTY_HOOK),
    // Control
    s("control_socket", Value(&["--control-socket"]), NO_CONTROL),
    s(
        "control_socket_mode",
        Value(&["--control-socket-mode"]),
        NO_CONTROL,
    ),
    s(
        "control_socket_disable",
        Switch(&["--no-control-socket"]),
        NO_CONTROL,
    ),
];

/// The gunicorn setting of this name.
pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The setting's row in the README's table: `| name | flags | what rwsgi does |`.
pub fn readme_row(setting: &Setting) -> String {
    let flags = match setting.flag {
        Flag::None => "(config file)".to_string(),
        Flag::Switch(s) | Flag::Value(s) => s
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let status = match setting.status {
        Status::Supported(key) if key == setting.name => "supported".to_string(),
        Status::Supported(key) => format!("supported (`{key}` in rwsgi.toml)"),
        Status::Mapped(key, note) => format!("mapped to `{key}`: {note}"),
        Status::WorkerHook => {
            "supported: called in each worker (see [Hooks](#hooks---hooks))".into()
        }
        Status::Ignored(why) => format!("ignored, with a warning: {why}"),
        Status::Refused(why) => format!("refused: {why}"),
    };
    format!("| `{}` | {flags} | {status} |", setting.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_of_gunicorns_settings_once() {
        assert_eq!(SETTINGS.len(), 119);
        let mut names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 119);
        let file_only = SETTINGS.iter().filter(|s| s.flag == Flag::None).count();
        assert_eq!(
            file_only, 25,
            "gunicorn has 94 flags and 25 config-file-only settings"
        );
    }

    /// The README's table of gunicorn's settings lists every one, as this table says.
    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../../../README.md");
        let header = "| gunicorn setting | flags | rwsgi |";
        let start = readme.find(header).expect("the README has the table");
        let rows: Vec<&str> = readme[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .collect();
        assert_eq!(
            rows.len(),
            SETTINGS.len(),
            "the README's table has other rows"
        );
        for setting in SETTINGS {
            let row = readme_row(setting);
            let name = format!("| `{}` |", setting.name);
            let found: Vec<&&str> = rows.iter().filter(|r| r.starts_with(&name)).collect();
            assert_eq!(found.len(), 1, "README: no single row for {}", setting.name);
            assert_eq!(*found[0], row, "README row of {} differs", setting.name);
        }
    }
}
