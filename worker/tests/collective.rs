//! The gang collectives on a machine without GPUs: the TCP ring between threads (its sums,
//! bit-identical results on every rank, many tensors, the watchdog, the handshake), world
//! size 1, and NCCL failing cleanly when there is no CUDA. Between real processes:
//! bench/tests/allreduce.rs, through allreduce-bench.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use surgery_worker::collective::{Collective, CollectiveError, Local, Nccl, TcpRing, TcpRingListener, gang_token};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
/// The watchdog timeout of the failure tests: short, so they finish quickly.
const SHORT: Duration = Duration::from_secs(2);
/// A generous bound that only a hang would exceed.
const HANG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread and fails the test if it does not return within `limit` (a hang
/// is a failure, never a stuck test run).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the collective hung past its watchdog")
}

fn bind() -> (TcpRingListener, String) {
    TcpRing::bind("127.0.0.1").expect("bind")
}

/// A connected ring of `world` members in this process.
fn ring(world: usize, token: &str, timeout: Duration) -> Vec<TcpRing> {
    let (listeners, endpoints): (Vec<_>, Vec<_>) = (0..world).map(|_| bind()).unzip();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let endpoints = endpoints.clone();
            let token = token.to_string();
            thread::spawn(move || l.connect(rank, &endpoints, &token, timeout).expect("connect"))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `f(rank, ring)` on every member at once; returns the results in rank order.
fn on_every_rank<T: Send + 'static>(
    rings: Vec<TcpRing>,
    f: impl Fn(usize, &mut TcpRing) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(rank, mut r)| {
            let f = f.clone();
            thread::spawn(move || f(rank, &mut r))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn bits(tensors: &[Tensor]) -> Vec<Vec<u8>> {
    tensors
        .iter()
        .map(|t| {
            let t = t.contiguous();
            let mut b = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut b, t.numel());
            b
        })
        .collect()
}

/// Shapes of a small "model": many tensors, scalars, empties, one larger than a bucket.
fn shapes() -> Vec<Vec<i64>> {
    let mut s: Vec<Vec<i64>> = vec![vec![], vec![0], vec![3000]];
    for i in 0..120i64 {
        s.push(match i % 4 {
            0 => vec![i % 7 + 1, 5],
            1 => vec![i % 13 + 1],
            2 => vec![2, i % 3 + 1, 4],
            _ => vec![1],
        });
    }
    s
}

/// Rank-dependent integer values: every summation order gives the exact sum, in f32 and
/// in bf16 (integers up to 256).
fn integer_tensors(rank: usize, kind: Kind) -> Vec<Tensor> {
    shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: i64 = s.iter().product();
            let base = Tensor::arange(n, (Kind::Float, CPU)).fmod(5) + (i % 3) as f64;
            (base * (rank + 1) as f64).view(s.as_slice()).to_kind(kind)
        })
        .collect()
}

#[test]
fn ring_sums_exactly_with_two_and_three_ranks() {
    surgery_worker::runtime::init();
    for world in [2usize, 3] {
        for kind in [Kind::Float, Kind::BFloat16] {
            let rings = ring(world, "t/attempt-1", HANG);
            // A small bucket: many segments, a tensor split across segments, packing.
            let rings: Vec<TcpRing> = rings.into_iter().map(|r| r.with_bucket_bytes(4 << 10)).collect();
            let results = within(HANG, move || {
                on_every_rank(rings, move |rank, r| {
                    let tensors = integer_tensors(rank, kind);
                    r.all_reduce_sum(&tensors).unwrap();
                    bits(&tensors)
                })
            });
            let scale = (world * (world + 1) / 2) as f64 / 1.0;
            let expected: Vec<Tensor> = integer_tensors(0, Kind::Float)
                .iter()
                .map(|t| (t * scale).to_kind(kind))
                .collect();
            assert_eq!(
                results[0],
                bits(&expected),
                "world {world} {kind:?}: the sums differ from the direct sum"
            );
            for (rank, r) in results.iter().enumerate() {
                assert_eq!(
                    r, &results[0],
                    "world {world} {kind:?}: rank {rank} differs from rank 0"
                );
            }
        }
    }
}

#[test]
fn ring_results_are_bit_identical_on_every_rank_and_close_to_the_direct_sum() {
    surgery_worker::runtime::init();
    let world = 3;
    // Irregular non-integer values, so the summation order shows in the last bits. (Not
    // tch's random generator: it is global, and the ranks are threads of one process.)
    let make = |rank: usize| -> Vec<Tensor> {
        let wave = |n: i64, kind: Kind| {
            ((Tensor::arange(n, (Kind::Float, CPU)) * (0.37 * (rank + 1) as f64) + 0.1).sin() * 3.3).to_kind(kind)
        };
        vec![
            wave(1001, Kind::Float),
            wave(63, Kind::Float).view([7, 9]),
            // Non-contiguous and bf16: reduced through f32 copies, written back.
            wave(24, Kind::Float).view([6, 4]).transpose(0, 1),
            wave(50, Kind::BFloat16),
        ]
    };
    let inputs: Vec<Vec<Tensor>> = (0..world).map(make).collect();
    let rings = ring(world, "t/attempt-1", HANG);
    let results = within(HANG, move || {
        on_every_rank(rings, move |rank, r| {
            let tensors = make(rank);
            r.all_reduce_sum(&tensors).unwrap();
            // Non-contiguous input stays a view of its own storage, updated in place.
            assert!(!tensors[2].is_contiguous());
            (
                bits(&tensors),
                tensors.iter().map(|t| t.to_kind(Kind::Float)).collect::<Vec<_>>(),
            )
        })
    });
    for (rank, (b, _)) in results.iter().enumerate() {
        assert_eq!(b, &results[0].0, "rank {rank} is not bit-identical to rank 0");
    }
    for (i, got) in results[0].1.iter().enumerate() {
        let direct = inputs
            .iter()
            .map(|ts| ts[i].to_kind(Kind::Float))
            .reduce(|a, b| a + b)
            .unwrap();
        let tol = if inputs[0][i].kind() == Kind::BFloat16 {
            5e-2
        } else {
            1e-5
        };
        let diff = (got - &direct).abs().max().double_value(&[]);
        assert!(
            diff <= tol,
            "tensor {i}: ring sum differs from the direct sum by {diff}"
        );
    }
}

#[test]
fn gradients_that_are_views_of_one_buffer_reduce_in_place() {
    surgery_worker::runtime::init();
    let rings = ring(2, "t/attempt-1", HANG);
    let results = within(HANG, move || {
        on_every_rank(rings, move |rank, r| {
            let flat = Tensor::full([100], (rank + 1) as f64, (Kind::Float, CPU));
            let views = [flat.narrow(0, 0, 30).view([5, 6]), flat.narrow(0, 30, 70)];
            r.all_reduce_sum(&views).unwrap();
            r.barrier().unwrap();
            Vec::<f32>::try_from(&flat).unwrap()
        })
    });
    assert_eq!(results[0], vec![3.0f32; 100]);
    assert_eq!(results[1], results[0]);
}

#[test]
fn world_size_one_is_a_no_op() {
    surgery_worker::runtime::init();
    let (listener, endpoint) = bind();
    let mut r = listener.connect(0, &[endpoint], "t/attempt-1", SHORT).unwrap();
    assert_eq!((r.rank(), r.world_size()), (0, 1));
    let t = [Tensor::from_slice(&[1.5f32, -2.0])];
    r.all_reduce_sum(&t).unwrap();
    r.barrier().unwrap();
    assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), vec![1.5, -2.0]);

    let mut local = Local;
    assert_eq!((local.rank(), local.world_size()), (0, 1));
    local.all_reduce_sum(&t).unwrap();
    local.barrier().unwrap();
    assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), vec![1.5, -2.0]);
}

#[test]
fn a_peer_that_never_connects_times_out() {
    // Rank 1's endpoint listens (connections queue in its backlog) but never answers.
    let (l0, e0) = bind();
    let (_silent, e1) = bind();
    let err = within(HANG, move || {
        l0.connect(0, &[e0, e1], "t/attempt-1", SHORT).unwrap_err()
    });
    assert!(err.is_timeout(), "{err}");
    assert!(err.is_retryable());

    // Rank 1's endpoint is not listening at all (its process is gone).
    let (l0, e0) = bind();
    let gone = {
        let (l, e) = bind();
        drop(l);
        e
    };
    let err = within(HANG, move || {
        l0.connect(0, &[e0, gone], "t/attempt-1", SHORT).unwrap_err()
    });
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn a_peer_that_hangs_mid_reduce_times_out_and_breaks_the_ring() {
    surgery_worker::runtime::init();
    let mut rings = ring(2, "t/attempt-1", SHORT);
    let hung = rings.pop().unwrap();
    let mut r0 = rings.pop().unwrap();
    let (err, again) = within(HANG, move || {
        let t = [Tensor::ones([1 << 16], (Kind::Float, CPU))];
        // Rank 1 is alive (its sockets are open) but never joins the all-reduce.
        let err = r0.all_reduce_sum(&t).unwrap_err();
        let again = r0.all_reduce_sum(&t).unwrap_err();
        drop(hung);
        (err, again)
    });
    assert!(matches!(err, CollectiveError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(matches!(again, CollectiveError::Broken(_)), "{again}");
}

#[test]
fn a_peer_that_dies_fails_the_reduce_promptly() {
    surgery_worker::runtime::init();
    let mut rings = ring(3, "t/attempt-1", SHORT);
    let r2 = rings.pop().unwrap();
    let r1 = rings.pop().unwrap();
    let r0 = rings.pop().unwrap();
    let errors = within(HANG, move || {
        let survivors: Vec<_> = [r0, r1]
            .into_iter()
            .map(|mut r| {
                thread::spawn(move || {
                    let t = [Tensor::ones([1 << 20], (Kind::Float, CPU))];
                    r.all_reduce_sum(&t).unwrap_err()
                })
            })
            .collect();
        // Rank 2 dies: its sockets close.
        thread::sleep(Duration::from_millis(100));
        drop(r2);
        survivors.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for e in &errors {
        // A closed connection is seen at once (Peer); a neighbour still waiting on a live
        // but failed rank may time out instead. Either way: retryable.
        assert!(
            matches!(
                e,
                CollectiveError::Peer { .. } | CollectiveError::Timeout { .. } | CollectiveError::Io { .. }
            ),
            "{e}"
        );
        assert!(e.is_retryable(), "{e}");
    }
}

#[test]
fn a_stale_peer_from_an_older_attempt_is_rejected() {
    surgery_worker::runtime::init();
    let current = gang_token("task-7", 2);
    let stale_token = gang_token("task-7", 1);
    let (l0, e0) = bind();
    let (l1, e1) = bind();
    let (stale, stale_e) = bind();
    // Rank 1 of the current attempt waits for its predecessor.
    let r1 = {
        let (e0, e1, current) = (e0.clone(), e1.clone(), current.clone());
        thread::spawn(move || l1.connect(1, &[e0, e1], &current, HANG))
    };
    // A rank 0 of attempt 1 still has rank 1's endpoint: it is turned away.
    let stale_err = {
        let e1 = e1.clone();
        within(HANG, move || {
            stale.connect(0, &[stale_e, e1], &stale_token, HANG).unwrap_err()
        })
    };
    assert!(matches!(stale_err, CollectiveError::Peer { .. }), "{stale_err}");
    assert!(stale_err.to_string().contains("another gang token"), "{stale_err}");
    // The real rank 0 still gets in, and the ring works.
    let r0 = thread::spawn(move || l0.connect(0, &[e0, e1], &current, HANG));
    let rings = vec![r0.join().unwrap().unwrap(), r1.join().unwrap().unwrap()];
    let sums = within(HANG, move || {
        on_every_rank(rings, |rank, r| {
            let t = [Tensor::from_slice(&[rank as f32 + 1.0])];
            r.all_reduce_sum(&t).unwrap();
            t[0].double_value(&[0]) as f32
        })
    });
    assert_eq!(sums, vec![3.0, 3.0]);
}

#[test]
fn ranks_that_pass_different_tensors_fail_instead_of_mixing_data() {
    surgery_worker::runtime::init();
    let rings = ring(2, "t/attempt-1", SHORT);
    let errors = within(HANG, move || {
        on_every_rank(rings, |rank, r| {
            let t = [Tensor::ones([10 + rank as i64], (Kind::Float, CPU))];
            r.all_reduce_sum(&t).unwrap_err()
        })
    });
    for e in errors {
        assert!(matches!(e, CollectiveError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("different tensors"), "{e}");
    }
}

#[test]
fn unsupported_tensors_are_refused_and_the_ring_stays_usable() {
    surgery_worker::runtime::init();
    let rings = ring(2, "t/attempt-1", HANG);
    let results = within(HANG, move || {
        on_every_rank(rings, |rank, r| {
            let bad = r.all_reduce_sum(&[Tensor::ones([3], (Kind::Double, CPU))]).unwrap_err();
            let twice = Tensor::ones([4], (Kind::Float, CPU));
            let aliased = r.all_reduce_sum(&[twice.shallow_clone(), twice.narrow(0, 1, 2)]);
            let t = [Tensor::from_slice(&[rank as f32])];
            r.all_reduce_sum(&t).unwrap();
            (bad, aliased.is_err(), t[0].double_value(&[0]) as f32)
        })
    });
    for (bad, aliased, sum) in results {
        assert!(matches!(bad, CollectiveError::Invalid(_)), "{bad}");
        assert!(!bad.is_retryable());
        assert!(aliased);
        assert_eq!(sum, 1.0);
    }
}

// ------------------------------------------------------------------ NCCL without CUDA

#[test]
fn nccl_fails_cleanly_without_cuda() {
    surgery_worker::runtime::init();
    if tch::Cuda::is_available() {
        eprintln!("CUDA is available here: the unavailable-path test does not apply");
        return;
    }
    match Nccl::unique_id() {
        Err(CollectiveError::Unavailable { library, detail }) => {
            assert!(library.contains("libnccl.so.2"), "{library}");
            assert!(detail.contains("SURGERY_NCCL_LIB"), "{detail}");
            assert!(detail.contains("libnccl.so.2"), "{detail}");
        }
        // An NCCL without a GPU can still make ids; then joining must fail on CUDA.
        Ok(_) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
    }
    let err = Nccl::new(0, 0, 1, [0u8; 128], SHORT).unwrap_err();
    match &err {
        CollectiveError::Unavailable { library, .. } => {
            assert!(
                library.contains("libcuda") || library.contains("libnccl") || library == "CUDA",
                "{err}"
            )
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(
        !err.is_retryable(),
        "a worker without CUDA should not retry NCCL forever: {err}"
    );
}
