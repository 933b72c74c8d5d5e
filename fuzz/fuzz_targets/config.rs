//! Any text read as `rwsgi.toml` is a layer of settings or one line naming the file and a
//! line of it, and a layer written back reads the same; as the gunicorn config reader's
//! output and as `GUNICORN_CMD_ARGS` it ends in a value or an error. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwsgi::config::fuzz::config_text;

fuzz_target!(|data: &[u8]| {
    config_text(data);
});
