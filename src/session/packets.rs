//! Conversions between fsutil's wire messages (`fsutil.types.Packet`/`Stat`) and our transport-free `fsutil::Packet`, and the pumps that move them between a gRPC stream and fsutil's channels.

use futures::{Stream, StreamExt};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::fsutil::{Packet, StatEntry};
use crate::proto::fsutil::types::{self as wire, packet::PacketType};

pub fn to_wire(p: Packet) -> wire::Packet {
    let (kind, stat, id, data) = match p {
        Packet::Stat(s) => (
            PacketType::PacketStat,
            s.map(stat_to_wire),
            0,
            Default::default(),
        ),
        Packet::Req { id } => (PacketType::PacketReq, None, id, Default::default()),
        Packet::Data { id, data } => (PacketType::PacketData, None, id, data.to_vec()),
        Packet::Fin => (PacketType::PacketFin, None, 0, Default::default()),
        Packet::Err(msg) => (PacketType::PacketErr, None, 0, msg.into_bytes()),
    };
    wire::Packet {
        r#type: kind as i32,
        stat,
        id,
        data,
    }
}

pub fn from_wire(p: wire::Packet) -> Result<Packet, String> {
    Ok(match PacketType::try_from(p.r#type) {
        Ok(PacketType::PacketStat) => Packet::Stat(p.stat.map(stat_from_wire)),
        Ok(PacketType::PacketReq) => Packet::Req { id: p.id },
        Ok(PacketType::PacketData) => Packet::Data {
            id: p.id,
            data: p.data.into(),
        },
        Ok(PacketType::PacketFin) => Packet::Fin,
        Ok(PacketType::PacketErr) => Packet::Err(String::from_utf8_lossy(&p.data).into_owned()),
        Err(_) => return Err(format!("unknown fsutil packet type {}", p.r#type)),
    })
}

fn stat_to_wire(s: StatEntry) -> wire::Stat {
    wire::Stat {
        path: s.path,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        mod_time: s.mod_time,
        linkname: s.linkname,
        devmajor: s.devmajor,
        devminor: s.devminor,
        xattrs: s.xattrs.into_iter().collect(),
    }
}

fn stat_from_wire(s: wire::Stat) -> StatEntry {
    StatEntry {
        path: s.path,
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        size: s.size,
        mod_time: s.mod_time,
        linkname: s.linkname,
        devmajor: s.devmajor,
        devminor: s.devminor,
        xattrs: s.xattrs.into_iter().collect(),
    }
}

/// Bytes of packets read off the wire but not yet taken by fsutil.
const MAX_BUFFERED_BYTES: usize = 64 << 20;

/// What a packet counts against that limit: its data, or a small fixed cost.
fn cost(p: &Packet) -> u32 {
    match p {
        Packet::Data { data, .. } => data.len().clamp(256, MAX_BUFFERED_BYTES) as u32,
        _ => 256,
    }
}

/// Feeds decoded packets from an incoming gRPC stream into `tx` until it ends; a closed
/// channel tells fsutil the peer is gone.
///
/// The stream is read as fast as it arrives, into a queue bounded by bytes rather than by
/// packets: an export of 20,000 files sends 20,000 small STAT packets while the receiver is
/// still busy writing, and a queue bounded by packets would leave them waiting in h2, where
/// small DATA frames count against its data-frame budget (see `h2serve`). Large file data is
/// still held back once 64 MiB wait.
pub async fn pump_in<S, M, E>(
    mut incoming: S,
    tx: mpsc::Sender<Packet>,
    decode: impl Fn(M) -> Result<Packet, String>,
) where
    S: Stream<Item = Result<M, E>> + Unpin,
{
    let budget = Arc::new(Semaphore::new(MAX_BUFFERED_BYTES));
    let (queue_tx, mut queue_rx) = mpsc::unbounded_channel::<(Packet, OwnedSemaphorePermit)>();
    let forward = tokio::spawn(async move {
        while let Some((packet, permit)) = queue_rx.recv().await {
            if tx.send(packet).await.is_err() {
                break;
            }
            drop(permit);
        }
    });
    while let Some(Ok(msg)) = incoming.next().await {
        let packet = decode(msg).unwrap_or_else(Packet::Err);
        let Ok(permit) = budget.clone().acquire_many_owned(cost(&packet)).await else {
            break;
        };
        if queue_tx.send((packet, permit)).is_err() {
            break;
        }
    }
    drop(queue_tx);
    let _ = forward.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn packets_survive_the_round_trip() {
        let stat = StatEntry {
            path: "a/b".into(),
            mode: 0o755 | crate::fsutil::mode::MODE_DIR,
            uid: 1,
            gid: 2,
            size: 3,
            mod_time: 4,
            linkname: "x".into(),
            devmajor: 5,
            devminor: 6,
            xattrs: BTreeMap::from([("user.k".to_string(), b"v".to_vec())]),
        };
        for p in [
            Packet::Stat(Some(stat)),
            Packet::Stat(None),
            Packet::Req { id: 7 },
            Packet::Data {
                id: 7,
                data: bytes::Bytes::from_static(b"hi"),
            },
            Packet::Fin,
            Packet::Err("boom".into()),
        ] {
            assert_eq!(from_wire(to_wire(p.clone())).unwrap(), p);
        }
    }
}
