//! Blender render speed per GPU model, to rank rented machines by price per unit of speed.
//!
//! Scores are Blender Open Data medians (estimated samples per minute summed over the
//! monster, junkshop and classroom scenes; linear: twice the score renders twice as fast),
//! single-device OptiX runs in Blender 4.x, from the 2026-09-06 snapshot (see
//! docs/operations.md, "Cloud"). A model without enough runs has no score: it is listed,
//! never guessed.

/// One GPU model: how the providers may name it, and its score.
struct Model {
    /// Normalised name ([`key`]).
    key: &'static str,
    /// The name meshd prints.
    name: &'static str,
    /// Open Data OptiX score, Blender 4.x median.
    score: u32,
    /// When set, the score holds only for cards with at least this much memory (GB): the
    /// provider's name covers variants measured differently (A100 PCIe 40 and 80 GB).
    min_vram_gb: Option<f64>,
}

const MODELS: &[Model] = &[
    m("rtx5090", "RTX 5090", 14_998),
    m("rtx4090", "RTX 4090", 11_078),
    m("rtx4080", "RTX 4080", 8_408),
    m("rtx4070ti", "RTX 4070 Ti", 6_377),
    m("rtx4070", "RTX 4070", 5_258),
    m("rtx4060ti", "RTX 4060 Ti", 3_818),
    m("rtx3090ti", "RTX 3090 Ti", 5_633),
    m("rtx3090", "RTX 3090", 5_398),
    m("rtx3080ti", "RTX 3080 Ti", 5_317),
    m("rtx3080", "RTX 3080", 4_516),
    m("rtx3070", "RTX 3070", 3_180),
    m("rtx3060", "RTX 3060", 2_174),
    m("rtx2080ti", "RTX 2080 Ti", 2_835),
    m("rtx6000ada", "RTX 6000 Ada", 10_935),
    m("rtxa6000", "RTX A6000", 5_052),
    m("rtxa5000", "RTX A5000", 4_462),
    m("rtxa4000", "RTX A4000", 2_976),
    m("l40s", "L40S", 9_223),
    m("l4", "L4", 3_594),
    m("a40", "A40", 4_070),
    m("a10g", "A10G", 3_402),
    m("a10", "A10", 2_948),
    Model {
        key: "a100pcie",
        name: "A100 PCIe 80GB",
        score: 3_831,
        min_vram_gb: Some(70.0),
    },
    m("h100sxm", "H100 SXM", 6_258),
    // nvidia-smi's name for the SXM part.
    m("h100hbm3", "H100 SXM", 6_258),
    m("t4", "Tesla T4", 1_402),
    m("v100", "Tesla V100", 2_124),
    m("v100sxm2", "Tesla V100", 2_124),
    m("p100", "Tesla P100", 1_072),
];

const fn m(key: &'static str, name: &'static str, score: u32) -> Model {
    Model {
        key,
        name,
        score,
        min_vram_gb: None,
    }
}

/// The name of a GPU reduced to what identifies the model: lower case, without vendor and
/// product-line words, memory sizes, form-factor noise, spaces or punctuation.
/// `"NVIDIA GeForce RTX 4090"`, `"RTX 4090"` and `"rtx_4090"` all give `"rtx4090"`.
pub fn key(name: &str) -> String {
    let lower = name.to_ascii_lowercase().replace(['_', '-'], " ");
    let words: Vec<&str> = lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "nvidia" | "geforce" | "tesla" | "generation" | "pcie4"))
        // Memory sizes ("80gb", "24g") say nothing about the model here.
        .filter(|w| {
            let digits = w.trim_end_matches("gb").trim_end_matches('g');
            digits == *w || digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit())
        })
        .collect();
    words.concat()
}

/// A GPU model's score and the name meshd prints for it, if known. `vram_gb` (the card's
/// memory) tells apart variants sold under one name.
pub fn lookup(name: &str, vram_gb: f64) -> Option<(&'static str, u32)> {
    let k = key(name);
    MODELS
        .iter()
        .find(|m| m.key == k && m.min_vram_gb.is_none_or(|min| vram_gb >= min))
        .map(|m| (m.name, m.score))
}

/// The score of a GPU model named by a user (`--ref-gpu`), any spelling [`key`] accepts.
pub fn score_of(name: &str) -> Option<u32> {
    let k = key(name);
    MODELS.iter().find(|m| m.key == k).map(|m| m.score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_spellings_find_the_same_model() {
        for name in [
            "RTX 4090",
            "NVIDIA GeForce RTX 4090",
            "rtx_4090",
            "GeForce RTX 4090 24GB",
        ] {
            assert_eq!(lookup(name, 24.0), Some(("RTX 4090", 11_078)), "{name}");
        }
        assert_eq!(lookup("RTX 6000Ada", 48.0).map(|m| m.1), Some(10_935));
        assert_eq!(
            lookup("NVIDIA RTX 6000 Ada Generation", 48.0).map(|m| m.1),
            Some(10_935)
        );
        assert_eq!(lookup("Tesla T4", 16.0).map(|m| m.1), Some(1_402));
        assert_eq!(
            lookup("NVIDIA H100 80GB HBM3", 80.0).map(|m| m.1),
            Some(6_258)
        );
        assert_eq!(lookup("NVIDIA A10G", 24.0).map(|m| m.1), Some(3_402));
        assert_eq!(lookup("A10", 24.0).map(|m| m.1), Some(2_948));
    }

    #[test]
    fn unmeasured_models_and_variants_have_no_score() {
        assert_eq!(
            lookup("A100 PCIE", 40.0),
            None,
            "only the 80 GB card was measured"
        );
        assert_eq!(lookup("A100 PCIE", 80.0).map(|m| m.1), Some(3_831));
        assert_eq!(lookup("A100 SXM4", 80.0), None);
        assert_eq!(lookup("L40", 48.0), None);
        assert_eq!(lookup("RTX 4090 Ti", 24.0), None, "no partial matches");
        assert_eq!(score_of("rtx 3090"), Some(5_398));
    }
}
