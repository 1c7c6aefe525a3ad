//! Ed25519 verification by ZIP-215's rules, one signature or a batch, for rdx's chain.
//!
//! Why not libsodium (PyNaCl), which the chain used first: it offers no batch verification, and
//! a tx's signature check was the largest single cost of admitting it. ZIP-215 is the rule set
//! made for consensus: every validator reaches the same verdict on any bytes, and a batch's
//! verdict equals its signatures' single verdicts, so a batch may stand in for them. CometBFT
//! checks its own votes by the same rules (curve25519-voi's ZIP-215 options).
//!
//! rdx's rule is ZIP-215's, plus one: a public key of small order is refused. Anyone can make a
//! signature such a key verifies, and libsodium refused them, so a chain switching rules does
//! not open those accounts to forgery.
//!
//! The curve arithmetic is ed25519-zebra's (Zcash's implementation of ZIP-215); this crate only
//! adapts it to Python and adds the key check.

use std::cell::RefCell;
use std::collections::HashMap;

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_zebra::{batch, Signature, VerificationKey, VerificationKeyBytes};
use pyo3::prelude::*;

/// Keys checked (``usable``), by their bytes: a chain has few signers, and decompressing a key
/// is a fifth of a batched verification's cost. Emptied when full, so its memory is bounded.
const CHECKED_KEYS: usize = 1 << 16;
thread_local! {
    static CHECKED: RefCell<HashMap<[u8; 32], bool>> = RefCell::new(HashMap::new());
}

/// Is this a point of the curve, not of small order?
fn usable(bytes: [u8; 32]) -> bool {
    CompressedEdwardsY(bytes).decompress().is_some_and(|point| !point.is_small_order())
}

/// The key's bytes, if they are a usable key.
fn key(public_key: &[u8]) -> Option<VerificationKeyBytes> {
    let bytes: [u8; 32] = public_key.try_into().ok()?;
    let ok = CHECKED.with(|checked| {
        let mut checked = checked.borrow_mut();
        if let Some(&ok) = checked.get(&bytes) {
            return ok;
        }
        if checked.len() >= CHECKED_KEYS {
            checked.clear();
        }
        let ok = usable(bytes);
        checked.insert(bytes, ok);
        ok
    });
    ok.then(|| VerificationKeyBytes::from(bytes))
}

fn signature(sig: &[u8]) -> Option<Signature> {
    let bytes: [u8; 64] = sig.try_into().ok()?;
    Some(Signature::from(bytes))
}

fn verify_one(public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    match (key(public_key), signature(sig)) {
        (Some(k), Some(s)) => VerificationKey::try_from(k).map_or(false, |vk| vk.verify(&s, message).is_ok()),
        _ => false,
    }
}

/// Does ``signature`` (64 bytes) sign ``message`` under ``public_key`` (32 bytes)?
#[pyfunction]
fn verify(py: Python<'_>, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    py.allow_threads(|| verify_one(public_key, message, signature))
}

/// The verdict of each (public key, message, signature), equal to ``verify``'s: one batch
/// verification for all, and the single check of each only if the batch fails.
#[pyfunction]
fn verify_batch(py: Python<'_>, items: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> Vec<bool> {
    py.allow_threads(|| {
        let mut verdicts = vec![false; items.len()];
        let mut verifier = batch::Verifier::new();
        let mut queued = Vec::with_capacity(items.len());
        for (i, (public_key, message, sig)) in items.iter().enumerate() {
            if let (Some(k), Some(s)) = (key(public_key), signature(sig)) {
                verifier.queue((k, s, &message[..]));
                queued.push(i);
            }
        }
        if queued.is_empty() {
            return verdicts;
        }
        if verifier.verify(rand::thread_rng()).is_ok() {
            for i in queued {
                verdicts[i] = true;
            }
        } else {
            for i in queued {
                let (public_key, message, sig) = &items[i];
                verdicts[i] = verify_one(public_key, message, sig);
            }
        }
        verdicts
    })
}

#[pymodule]
fn rdx_ed25519(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_batch, m)?)?;
    Ok(())
}
