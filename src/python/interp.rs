//! Starting the embedded interpreter so that it behaves like the user's `python`:
//! the interpreter rwsgi was built for, the virtualenv in use (`venv`), `PYTHONPATH`,
//! and a `sys.argv` and `sys.executable` that make sense to the application.

use std::ffi::{CString, c_char};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;

use pyo3::ffi;

fn status_error(status: ffi::PyStatus) -> Option<String> {
    // SAFETY: PyStatus_Exception only reads the struct passed by value.
    if unsafe { ffi::PyStatus_Exception(status) } == 0 {
        return None;
    }
    let message = if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a set err_msg is a static NUL-terminated C string owned by CPython.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    Some(message)
}

/// Initialises CPython in this process. The calling thread holds the GIL afterwards.
pub fn initialize() -> Result<(), String> {
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Ok(());
    }
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| c"rwsgi".to_owned()))
        .collect();
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    let executable =
        super::venv::executable().and_then(|p| CString::new(p.as_os_str().as_bytes()).ok());
    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: the PyConfig is initialised by PyConfig_InitPythonConfig before any field is
    // read, every string handed over is NUL-terminated and outlives the call that copies
    // it, and the config is cleared on every path after initialisation was attempted.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        // Our command line is rwsgi's, not Python's: show it in sys.argv, never parse it.
        config.parse_argv = 0;
        config.install_signal_handlers = 1;
        let mut result = ffi::PyConfig_SetBytesArgv(
            config,
            argv_ptrs.len() as ffi::Py_ssize_t,
            argv_ptrs.as_mut_ptr(),
        );
        if let (None, Some(executable)) = (status_error(result), &executable) {
            result =
                ffi::PyConfig_SetBytesString(config, &mut config.executable, executable.as_ptr());
        }
        if status_error(result).is_none() {
            result = ffi::Py_InitializeFromConfig(config);
        }
        ffi::PyConfig_Clear(config);
        match status_error(result) {
            Some(message) => Err(format!("cannot start Python: {message}")),
            None => Ok(()),
        }
    }
}
