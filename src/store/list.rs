//! Listing every key under `<prefix>/subnets/`, in pages read at one etcd revision.
//!
//! One `Get` of the whole prefix does not scale: 65,000 flannel records are about 11 MB, over
//! the 4 MiB a gRPC client decodes by default (the listing then fails, and the node never
//! starts), and the whole response sits in memory beside whatever is built from it. Pages of
//! [`PAGE`] keys, each read at the first page's revision, give the same consistent view with
//! one page in memory at a time; the caller looks at each key as it arrives. A page that is
//! still too large (a few records near etcd's 1.5 MiB value limit) is read again in halves,
//! down to one key per page.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, KeyValue};

use super::{Keys, StoreError};

/// Keys per page: about 1.5 MB of flannel records. Fewer, larger pages cost etcd less: it
/// counts every key left in the range for each page it serves (the response's `count`), so
/// n keys in pages of p cost it about n^2/2p steps (65,000 keys in pages of 1,000 took etcd
/// 0.7 s here; in pages of 8,000, 0.15 s).
const PAGE: i64 = 8_000;

/// gRPC's `OUT_OF_RANGE`, which the client reports for a response over its decoding limit.
const GRPC_OUT_OF_RANGE: i32 = 11;

/// The end of the key range that holds every key starting with `prefix` (etcd's range end for
/// a prefix: the prefix with its last byte incremented, dropping trailing 0xff bytes).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Whether `e` says a response was larger than the client decodes.
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == GRPC_OUT_OF_RANGE)
}

/// Calls `f` on every key under the subnets prefix, in key order, all read at one revision;
/// returns that revision.
pub(crate) async fn for_each_lease(
    client: &mut Client,
    keys: &Keys,
    mut f: impl FnMut(&KeyValue),
) -> Result<i64, StoreError> {
    let dir = keys.subnets_dir();
    let end = prefix_end(dir.as_bytes());
    let mut from = dir.as_bytes().to_vec();
    let mut revision = 0;
    let mut page = PAGE;
    let (started, mut keys_seen, mut pages, mut waited) =
        (Instant::now(), 0usize, 0u32, Duration::ZERO);
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let asked = Instant::now();
        let got = client.get(from.clone(), Some(opts)).await;
        waited += asked.elapsed();
        let resp = match got {
            Ok(r) => r,
            Err(e) if too_large(&e) && page > 1 => {
                page = (page / 2).max(1);
                continue;
            }
            Err(source) => {
                return Err(StoreError::LeaseList {
                    prefix: dir.clone(),
                    source,
                })
            }
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            f(kv);
        }
        keys_seen += resp.kvs().len();
        pages += 1;
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                // The next page starts just after the last key read.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => {
                tracing::debug!(
                    keys = keys_seen,
                    pages,
                    revision,
                    total_ms = started.elapsed().as_millis() as u64,
                    etcd_ms = waited.as_millis() as u64,
                    "leases listed"
                );
                return Ok(revision);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_end_of_a_prefix_is_its_successor() {
        assert_eq!(
            prefix_end(b"/coreos.com/network/subnets/"),
            b"/coreos.com/network/subnets0"
        );
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
