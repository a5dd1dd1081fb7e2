//! Listing every key under `<prefix>/subnets/`, in pages read at one etcd revision.
//!
//! One `Get` of the whole prefix does not scale: 65,000 flannel records are about 11 MB, over
//! the 4 MiB a gRPC client decodes by default (the listing then fails, and the node never
//! starts), and the whole response sits in memory beside whatever is built from it. Pages of
//! [`PAGE`] keys, each read at the first page's revision, give the same consistent view with
//! one page in memory at a time; the caller looks at each key as it arrives. A page that is
//! still too large (a few records near etcd's 1.5 MiB value limit) is read again in halves,
//! down to one key per page.

use etcd_client::{Client, GetOptions, KeyValue};

use super::{Keys, StoreError};

/// Keys per page: about 180 KB of flannel records.
const PAGE: i64 = 1_000;

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
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = match client.get(from.clone(), Some(opts)).await {
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
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                // The next page starts just after the last key read.
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
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
