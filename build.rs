//! Link the binary to the libpython of the interpreter it was built for.
//!
//! Two CPython builds with the same soname may be installed side by side (a user's
//! pyenv or venv base, and the distribution's). Without an rpath the dynamic loader
//! picks whichever it finds first, and the embedded interpreter then reports the wrong
//! `sys.prefix`: the user's pip packages vanish. An rpath to pyo3's chosen `lib_dir`
//! makes the build-time interpreter the run-time one.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(lib_dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    if let Some(executable) = config.executable() {
        println!("cargo:rustc-env=RWSGI_BUILD_PYTHON={executable}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
