//! Standard output for the commands. A reader that leaves early (`meshd status --json |
//! head`, `| grep -q`) ends the command quietly with status 141, as a shell reports for a
//! tool killed by SIGPIPE, instead of a panic (what `println!` does) or an error line.
//!
//! SIGPIPE itself stays ignored (Rust's default): the daemon, and the commands' own
//! sockets to it, must see a closed peer as an error, not die of it.

use std::io::{self, Write};

/// Exit status of a command whose reader left.
pub const READER_LEFT: i32 = 141;

/// Writes `args` to standard output (the [`outln!`] macro).
pub fn write(args: std::fmt::Arguments<'_>) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        fail(e)
    }
}

/// Writes `bytes` to standard output and flushes.
pub fn write_bytes(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        fail(e)
    }
}

fn fail(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(READER_LEFT)
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1)
}

/// `println!` for the commands (see the module docs).
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
