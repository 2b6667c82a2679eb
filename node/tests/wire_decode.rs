//! Decoding an MPC message does not amplify: a message of N bytes never holds much more than
//! N bytes of heap while and after it is decoded. Measured with a counting allocator (this
//! test binary's own), on the lists that used to amplify: an `Abort` blaming a quarter of a
//! million empty peer ids held about 8 MiB for a 262 KB message.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use p2p_mpc_node::mpc::wire::{self, Body, MAX_MESSAGE_BYTES, MpcMessage, SessionId};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// One measurement at a time (tests run on several threads).
static MEASURE: Mutex<()> = Mutex::new(());

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decodes `bytes` and returns the result with the peak heap growth during the decode.
fn peak_while_decoding(bytes: &[u8]) -> (Result<MpcMessage, String>, usize) {
    let _one = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = wire::decode(bytes);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (out, peak)
}

/// CBOR: a map with `n` text keys/values, built by hand so that the test can write what
/// serde never would (a quarter-million-entry list).
fn head(major: u8, n: u64) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
        _ => {
            let mut v = vec![m | 26];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        }
    }
}

fn text(s: &str) -> Vec<u8> {
    let mut v = head(3, s.len() as u64);
    v.extend_from_slice(s.as_bytes());
    v
}

/// `{"version": 1, "session": [16 zero bytes], "body": {variant: {field: [items...]}}}`,
/// the item encoded by `item`, as many as fit in the message limit.
fn message_with_list(
    variant: &str,
    field: &str,
    extra: &[(&str, Vec<u8>)],
    item: &[u8],
) -> Vec<u8> {
    let mut out = head(5, 3);
    out.extend(text("version"));
    out.push(1);
    out.extend(text("session"));
    out.extend(head(4, 16));
    out.extend(std::iter::repeat_n(0u8, 16));
    out.extend(text("body"));
    out.extend(head(5, 1));
    out.extend(text(variant));
    out.extend(head(5, 1 + extra.len() as u64));
    for (k, v) in extra {
        out.extend(text(k));
        out.extend_from_slice(v);
    }
    out.extend(text(field));
    let room = MAX_MESSAGE_BYTES as usize - out.len() - 5;
    let n = room / item.len();
    out.extend(head(4, n as u64));
    for _ in 0..n {
        out.extend_from_slice(item);
    }
    assert!(out.len() as u64 <= MAX_MESSAGE_BYTES);
    out
}

fn assert_bounded(name: &str, bytes: &[u8]) {
    let (result, peak) = peak_while_decoding(bytes);
    assert!(
        peak <= 2 * bytes.len() + 64 * 1024,
        "{name}: decoding {} bytes peaked at {peak} bytes of heap",
        bytes.len()
    );
    let err = result.expect_err("an over-long list is refused");
    assert!(err.contains("list longer than"), "{name}: {err}");
}

#[test]
fn an_abort_blaming_empty_peer_ids_does_not_amplify() {
    let bytes = message_with_list("Abort", "blamed", &[("reason", text("x"))], &text(""));
    assert_bounded("abort", &bytes);
}

#[test]
fn other_lists_do_not_amplify() {
    // A DKG invite listing empty participants.
    let invite = message_with_list(
        "DkgInvite",
        "participants",
        &[("key_id", text("k")), ("threshold", vec![2])],
        &text(""),
    );
    assert_bounded("dkg invite", &invite);
    // Batch verdicts of `null` (each would be a 56-byte Option).
    let verdict = message_with_list("AggBatchVerdict", "rejected", &[], &[0xf6]);
    assert_bounded("batch verdict", &verdict);
    // Batch shares with empty fields (structs are maps on this wire).
    let mut share = head(5, 3);
    for key in ["report_id", "encapped_key", "ciphertext"] {
        share.extend(text(key));
        share.push(if key == "report_id" { 0x60 } else { 0x40 });
    }
    let batch = message_with_list(
        "AggBatchInvite",
        "shares",
        &[("task_id", text("t"))],
        &share,
    );
    assert_bounded("batch invite", &batch);
}

#[test]
fn honest_messages_round_trip() {
    let m = MpcMessage::new(
        SessionId::random(),
        Body::Abort {
            reason: "r".into(),
            blamed: vec!["12D3KooWabc".into(); 200],
        },
    );
    let back = wire::decode(&wire::encode(&m)).unwrap();
    assert!(matches!(back.body, Body::Abort { blamed, .. } if blamed.len() == 200));
    let too_big = vec![0u8; MAX_MESSAGE_BYTES as usize + 1];
    assert!(
        wire::decode(&too_big)
            .unwrap_err()
            .contains("over the limit")
    );
}
