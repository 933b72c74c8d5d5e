//! Process titles, as `ps` shows them: `rwsgi: master [APP]`, `rwsgi: front`,
//! `rwsgi: worker [APP]` (gunicorn's `setproctitle` convention).
//!
//! `ps` reads a process's command line from the memory its arguments were passed in
//! (`/proc/self/stat` gives where: `arg_start` to `arg_end`). The title is written over
//! that memory, cut to its size, and the rest zeroed; the environment, which follows it,
//! is not touched. The thread name (`comm`) becomes `rwsgi-master`, `rwsgi-front` or
//! `rwsgi-worker`.

use std::ffi::CString;

/// Sets this process's title; does nothing if the argument memory cannot be found.
pub fn set(title: &str) {
    let role = title.split(" [").next().unwrap_or(title);
    if let Ok(name) = CString::new(role.replace("rwsgi: ", "rwsgi-")) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (cut to 15 bytes by the
        // kernel) and changes only this thread's name.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    let Some((start, end)) = argument_area() else {
        return;
    };
    let size = end - start;
    if size < 2 {
        return;
    }
    let bytes = title.as_bytes();
    let written = bytes.len().min(size - 1);
    // SAFETY: [start, end) is this process's own argument memory as the kernel reports
    // it: mapped, writable, and read by nothing in rwsgi after start-up (std copies the
    // arguments when `env::args` is first used, which clap did before this is called).
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, size);
        area[..written].copy_from_slice(&bytes[..written]);
        area[written..].fill(0);
    }
}

/// Fields 48 and 49 of `/proc/self/stat`: where the arguments start and end.
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after it are counted from
    // its closing parenthesis, which is field 3's start minus 2.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_ascii_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    (end > start).then_some((start, end))
}
