//! The sending end of DiffCopy: every stat in walk order, then file contents as the receiver asks.
//!
//! Entry ids are positions in the STAT sequence, counting every entry (directories and links
//! too); only regular files can be asked for. Walking, reading files and listening for requests
//! run side by side, as the receiver asks for files while stats are still coming.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::mode::can_request_data;
use super::{Error, Packet, Result, Source};

/// Bytes per DATA packet. Upstream reads files through a 32 KiB buffer; bigger packets mean far
/// fewer messages, but every queued packet is memory (1 MiB packets made a large transfer's peak
/// RSS a multiple of buildctl's; BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: usize = 128 << 10;

/// File contents read but not yet taken by the transport, at most. The packet queue alone (64
/// packets) would let 8 MiB of 128 KiB chunks wait, most of a large file's transfer peak RSS;
/// past this much, h2's flow control is what paces the transfer anyway.
pub const DEFAULT_MAX_QUEUED_DATA: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub chunk_size: usize,
    /// Bytes of file contents allowed to wait between the file reader and the transport.
    pub max_queued_data: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_queued_data: DEFAULT_MAX_QUEUED_DATA,
        }
    }
}

/// A chunk's buffer and its share of the queued-data budget, given back when the last reference
/// to the chunk's bytes is dropped (the transport copied or sent them).
struct Budgeted {
    buf: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Send `source` over a packet stream: `tx` carries our packets to the receiver, `rx` brings
/// its packets. Returns once the receiver said FIN and we answered it.
pub async fn send(
    source: Source,
    opts: SendOptions,
    tx: mpsc::Sender<Packet>,
    mut rx: mpsc::Receiver<Packet>,
) -> Result<()> {
    let source = Arc::new(source);
    let files: Arc<Mutex<HashMap<u32, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (req_tx, req_rx) = std::sync::mpsc::channel::<(u32, String)>();

    let mut walker = tokio::task::spawn_blocking({
        let (source, files, stop, tx) = (source.clone(), files.clone(), stop.clone(), tx.clone());
        move || {
            let res = send_stats(&source, &files, &stop, &tx);
            if let Err(e) = &res {
                if !matches!(e, Error::Closed) {
                    let _ = tx.blocking_send(Packet::Err(e.to_string()));
                }
            }
            res
        }
    });
    let mut data = tokio::task::spawn_blocking({
        let (stop, tx) = (stop.clone(), tx.clone());
        let chunk = opts.chunk_size.max(1);
        // Never below one chunk, or a chunk could wait for permits that do not exist.
        let budget = Arc::new(tokio::sync::Semaphore::new(opts.max_queued_data.max(chunk)));
        move || {
            let res = send_contents(&source, req_rx, chunk, &budget, &stop, &tx);
            if let Err(e) = &res {
                if !matches!(e, Error::Closed) {
                    let _ = tx.blocking_send(Packet::Err(e.to_string()));
                }
            }
            res
        }
    });

    let mut walking = true;
    let mut reading = true;
    let res = loop {
        tokio::select! {
            pkt = rx.recv() => match pkt {
                None => break Err(Error::Closed),
                Some(Packet::Err(m)) => break Err(Error::Remote(m)),
                Some(Packet::Req { id }) => {
                    let path = files.lock().map_err(|_| Error::Protocol("poisoned".into()))?.remove(&id);
                    match path {
                        // The data thread only stops early on error, which ends this loop too.
                        Some(path) => { let _ = req_tx.send((id, path)); }
                        None => break Err(Error::Protocol(format!("invalid file id {id}"))),
                    }
                }
                Some(Packet::Fin) => {
                    let sent = tx.send(Packet::Fin).await.map_err(|_| Error::Closed);
                    break sent;
                }
                // Nothing else is meant for a sender; upstream ignores it too.
                Some(_) => {}
            },
            r = &mut walker, if walking => {
                walking = false;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(Error::Protocol(format!("walker failed: {e}"))),
                }
            }
            r = &mut data, if reading => match r {
                Ok(Ok(())) => reading = false,
                Ok(Err(e)) => break Err(e),
                Err(e) => break Err(Error::Protocol(format!("file reader failed: {e}"))),
            },
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(req_tx);
    res
}

fn send_stats(
    source: &Source,
    files: &Mutex<HashMap<u32, String>>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Packet>,
) -> Result<()> {
    let mut id: u32 = 0;
    source.walk(&mut |st| {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        if can_request_data(st.mode) {
            // Registered before the stat goes out, so a request can never beat it.
            files
                .lock()
                .map_err(|_| Error::Protocol("poisoned".into()))?
                .insert(id, st.path.clone());
        }
        id += 1;
        tx.blocking_send(Packet::Stat(Some(st)))
            .map_err(|_| Error::Closed)
    })?;
    tx.blocking_send(Packet::Stat(None))
        .map_err(|_| Error::Closed)
}

fn send_contents(
    source: &Source,
    reqs: std::sync::mpsc::Receiver<(u32, String)>,
    chunk: usize,
    budget: &Arc<tokio::sync::Semaphore>,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Packet>,
) -> Result<()> {
    for (id, path) in reqs {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A file that can't be opened (a socket, gone, unreadable) goes out empty, as upstream.
        if let Some(mut f) = source.open(&path)? {
            // Sized to the file, not the chunk: a 1 MiB buffer per 4 KiB file costs a 1 MiB
            // memset each (glibc serves it from the heap) and keeps 1 MiB alive per queued packet.
            // One byte more than what is left, to see EOF in the same read; a file that turns out
            // longer than its size is read on in whole chunks.
            let mut left = f.metadata().map(|m| m.len() as usize).unwrap_or(chunk);
            loop {
                let want = chunk.min(left.saturating_add(1));
                // Taken before the buffer exists, so waiting chunks cost no memory.
                let permit =
                    futures::executor::block_on(budget.clone().acquire_many_owned(want as u32))
                        .map_err(|_| Error::Closed)?;
                let mut buf = vec![0u8; want];
                let mut n = 0;
                while n < want {
                    match f.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io("read", source.root().join(&path), e)),
                    }
                }
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                left = if n > left { chunk } else { left - n };
                let data = bytes::Bytes::from_owner(Budgeted {
                    buf,
                    _permit: permit,
                });
                tx.blocking_send(Packet::Data { id, data })
                    .map_err(|_| Error::Closed)?;
                if n < want {
                    break;
                }
            }
        }
        tx.blocking_send(Packet::Data {
            id,
            data: bytes::Bytes::new(),
        })
        .map_err(|_| Error::Closed)?;
    }
    Ok(())
}
