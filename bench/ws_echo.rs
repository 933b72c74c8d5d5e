//! The WebSocket echo load of bench/asgi.sh: CONNECTIONS clients, one thread each, each
//! sending a masked text message and waiting for its echo, again and again, for
//! SECONDS (RFC 6455 §5: client frames masked, server frames not). A compiled client,
//! std only (`rustc -O`), so that the load costs little next to the servers on a
//! machine of two cores: it prints its own CPU time for the script to show.
//!
//! Usage: ws_echo HOST PORT PATH CONNECTIONS SECONDS MESSAGE_BYTES
//! Prints `messages=N seconds=S cpu_ticks=T`. Exit code 3 when the server refuses the
//! upgrade (its status line on stderr), 1 on any other failure.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Refused(String);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: ws_echo HOST PORT PATH CONNECTIONS SECONDS MESSAGE_BYTES");
        std::process::exit(2);
    }
    let number = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("not a number: {}", args[i]);
            std::process::exit(2)
        })
    };
    let (host, port, path) = (args[1].clone(), number(2) as u16, args[3].clone());
    let (connections, seconds, size) = (number(4) as usize, number(5), number(6) as usize);
    let stop = Arc::new(AtomicBool::new(false));
    let messages = Arc::new(AtomicU64::new(0));
    // Every client connected (and upgraded) before the clock starts.
    let ready = Arc::new(Barrier::new(connections + 1));
    let mut threads = Vec::new();
    for n in 0..connections {
        let (host, path) = (host.clone(), path.clone());
        let (stop, messages, ready) = (stop.clone(), messages.clone(), ready.clone());
        threads.push(std::thread::spawn(
            move || -> Result<(), Result<Refused, io::Error>> {
                let opened = open(&host, port, &path);
                ready.wait();
                let (mut reader, mut writer) = opened?;
                let payload = vec![b'a' + (n % 26) as u8; size];
                let mut seed = 0x9e37_79b9_u32 ^ n as u32;
                let mut frame = Vec::with_capacity(size + 14);
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    masked_text(&mut frame, &payload, &mut seed);
                    writer.write_all(&frame).map_err(Err)?;
                    loop {
                        let (opcode, data) = read_frame(&mut reader).map_err(Err)?;
                        match opcode {
                            0x1 | 0x2 if data.len() == size => break,
                            0x9 => {
                                masked(&mut frame, 0xA, &data, &mut seed); // pong
                                writer.write_all(&frame).map_err(Err)?;
                            }
                            0xA => {}
                            _ => {
                                return Err(Err(io::Error::other(format!(
                                    "unexpected frame {opcode:#x}"
                                ))))
                            }
                        }
                    }
                    count += 1;
                }
                messages.fetch_add(count, Ordering::Relaxed);
                masked(&mut frame, 0x8, &1000u16.to_be_bytes(), &mut seed); // close
                let _ = writer.write_all(&frame);
                Ok(())
            },
        ));
    }
    ready.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut failed = 0;
    for thread in threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(Ok(Refused(status)))) => {
                eprintln!("upgrade refused: {status}");
                std::process::exit(3);
            }
            Ok(Err(Err(err))) => {
                eprintln!("a client failed: {err}");
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "messages={} seconds={elapsed:.3} cpu_ticks={} failed={failed}",
        messages.load(Ordering::Relaxed),
        cpu_ticks()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Connects and upgrades (RFC 6455 §4.1); the fixed key is fine for a load client.
fn open(
    host: &str,
    port: u16,
    path: &str,
) -> Result<(BufReader<TcpStream>, TcpStream), Result<Refused, io::Error>> {
    let stream = TcpStream::connect((host, port)).map_err(Err)?;
    stream.set_nodelay(true).map_err(Err)?;
    let mut writer = stream.try_clone().map_err(Err)?;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .map_err(Err)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(Err)?;
    let switching = status.split_whitespace().nth(1) == Some("101");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(Err)? == 0 || line == "\r\n" {
            break;
        }
    }
    if !switching {
        return Err(Ok(Refused(status.trim_end().to_string())));
    }
    Ok((reader, writer))
}

/// A masked text frame carrying `payload`, into `frame`.
fn masked_text(frame: &mut Vec<u8>, payload: &[u8], seed: &mut u32) {
    masked(frame, 0x1, payload, seed)
}

/// A final, masked frame of `opcode` (RFC 6455 §5.2, §5.3).
fn masked(frame: &mut Vec<u8>, opcode: u8, payload: &[u8], seed: &mut u32) {
    frame.clear();
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    // xorshift: the mask must be unpredictable to proxies, not secret.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    let key = seed.to_be_bytes();
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// One whole server frame (unmasked; a fragmented message is not expected here).
fn read_frame(reader: &mut BufReader<TcpStream>) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    let length = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n)?;
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            reader.read_exact(&mut n)?;
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    if head[1] & 0x80 != 0 || length > 64 << 20 {
        return Err(io::Error::other("a masked or oversized server frame"));
    }
    let mut data = vec![0; length];
    reader.read_exact(&mut data)?;
    Ok((head[0] & 0x0f, data))
}

/// This process's CPU time (user + system) in clock ticks (/proc/self/stat).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}
