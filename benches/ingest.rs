//! Ingest benchmark (SPEC §8): time to decode a 10,000-application list into the model, against
//! plain `serde_json` parsing of the same bytes into a `Value`. Prints figures; asserts nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use argocd_gateway::argocd::model::{decode_application_list, decode_application_list_from};
use argocd_gateway::simulator::objects::synthetic_app;

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let n = 10_000;
    let items: Vec<serde_json::Value> = (0..n).map(|i| synthetic_app(i, "argocd")).collect();
    let list = serde_json::json!({"metadata": {"resourceVersion": "123456"}, "items": items});
    let bytes = serde_json::to_vec(&list).unwrap_or_default();
    println!(
        "list of {n} applications: {:.1} MiB",
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    let runs = 5;
    let parse = best_of(runs, || {
        let v: serde_json::Value = serde_json::from_slice(black_box(&bytes)).unwrap_or_default();
        black_box(v);
    });
    let ingest = best_of(runs, || {
        let l = decode_application_list(black_box(&bytes))
            .map(|l| l.items.len())
            .unwrap_or_default();
        black_box(l);
    });
    // The client decodes lists from the body as it arrives; a buffered reader over the same
    // bytes shows what that path costs compared with decoding a slice.
    let streamed = best_of(runs, || {
        let l = decode_application_list_from(std::io::BufReader::new(black_box(&bytes[..])))
            .map(|l| l.items.len())
            .unwrap_or_default();
        black_box(l);
    });
    println!("serde_json::Value parse : {parse:?} (best of {runs})");
    println!("decode into the model   : {ingest:?} (best of {runs})");
    println!("decode from a reader    : {streamed:?} (best of {runs})");
    println!(
        "ratio ingest/parse      : {:.2} (SPEC §8 target <= 2.0)",
        ingest.as_secs_f64() / parse.as_secs_f64()
    );
}
