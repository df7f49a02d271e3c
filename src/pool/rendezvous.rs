//! Rendezvous (highest-random-weight) hashing: the order in which a route key tries a pool's daemons, the same in every process and on every machine, moving only about 1/K of the keys when a daemon joins or leaves.
//!
//! Each daemon's weight for a key is a SHA-256 of both, so no seed or per-process state enters
//! (std's hasher is randomized per process). The key always lands on its heaviest daemon; when
//! that one leaves, the keys it held fall to their second heaviest and no other key moves; a new
//! daemon takes only the keys for which it weighs most. The weight is part of bkrun's behaviour:
//! changing it would send every project to a cold cache once.

use sha2::{Digest, Sha256};

/// The weight of `node` for `key`: the first 8 bytes of SHA-256(len(key) ‖ key ‖ node), the
/// length keeping ("ab", "c") apart from ("a", "bc").
pub fn weight(key: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key.as_bytes());
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// The indices of `nodes`, heaviest for `key` first: the order to try them in.
pub fn order<S: AsRef<str>>(key: &str, nodes: &[S]) -> Vec<usize> {
    let mut w: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (weight(key, n.as_ref()), i))
        .collect();
    // Ties (never seen in practice) go to the earlier address, so the order stays total.
    w.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    w.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("tcp://bkrun-{i}.bkrun.ci.svc:1234"))
            .collect()
    }

    fn keys() -> Vec<String> {
        (0..100).map(|i| format!("/builds/project-{i}")).collect()
    }

    fn first<S: AsRef<str>>(key: &str, nodes: &[S]) -> String {
        nodes[order(key, nodes)[0]].as_ref().to_string()
    }

    #[test]
    fn the_same_key_picks_the_same_daemon_everywhere() {
        let p = pool(3);
        // Pinned: a change here moves every project to another daemon's cold cache.
        assert_eq!(weight("/src/app", "tcp://a:1234"), 0x8ddf_439b_d8fb_e12b);
        assert_eq!(
            order(
                "/src/app",
                &["tcp://a:1234", "tcp://b:1234", "tcp://c:1234"]
            ),
            [1, 0, 2]
        );
        let o = order("/src/app", &p);
        assert_eq!(o, order("/src/app", &p));
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "every daemon appears once");
        // The order depends on the set, not on how it was listed.
        let mut rev = p.clone();
        rev.reverse();
        for k in keys() {
            assert_eq!(first(&k, &p), first(&k, &rev));
        }
        assert!(order("k", &Vec::<String>::new()).is_empty());
        assert_eq!(order("k", &["only"]), [0]);
    }

    #[test]
    fn a_hundred_keys_spread_fairly_over_three() {
        let p = pool(3);
        let mut counts = [0usize; 3];
        for k in keys() {
            counts[order(&k, &p)[0]] += 1;
        }
        // A fair share is 33; binomial(100, 1/3) stays within 33 ± 14 with probability > 99.5%.
        for c in counts {
            assert!((19..=47).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_daemon_moves_only_its_keys_to_their_second_choice() {
        let p = pool(3);
        let smaller: Vec<String> = p.iter().filter(|a| *a != &p[1]).cloned().collect();
        let mut moved = 0;
        for k in keys() {
            let before = order(&k, &p);
            let after = first(&k, &smaller);
            if p[before[0]] == p[1] {
                moved += 1;
                assert_eq!(after, p[before[1]], "{k} falls to its second choice");
            } else {
                assert_eq!(after, p[before[0]], "{k} stays");
            }
        }
        assert!(moved > 0 && moved < 50, "{moved}");
    }

    #[test]
    fn adding_a_daemon_moves_about_a_quarter_of_the_keys_all_to_it() {
        let (p3, p4) = (pool(3), pool(4));
        let mut moved = 0;
        for k in keys() {
            let (a, b) = (first(&k, &p3), first(&k, &p4));
            if a != b {
                moved += 1;
                assert_eq!(b, p4[3], "{k} may move only to the new daemon");
            }
        }
        assert!((10..=40).contains(&moved), "{moved} of 100 moved");
    }
}
