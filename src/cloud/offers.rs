//! Rental offers from any provider, in one shape, filtered and ranked by price per unit of
//! Blender speed; and what a job would cost on each. Pure: the providers' clients fill in
//! [`Offer`]s.

use serde::{Deserialize, Serialize};

use super::Provider;
use super::speed;

/// A machine for rent, as meshd compares them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub provider: Provider,
    /// What to rent it by: Vast's offer (ask) id, Clore's server id.
    pub id: u64,
    /// The GPU model as the provider names it.
    pub gpu: String,
    pub gpus: u32,
    /// Memory per GPU, GB.
    pub vram_gb: f64,
    /// The whole machine, US dollars per hour (a spot offer: its minimum bid).
    pub usd_per_hour: f64,
    /// 0 to 1, as the provider rates the host.
    pub reliability: Option<f64>,
    /// Two-letter country code.
    pub country: Option<String>,
    /// Priced as interruptible (Vast bid, Clore spot).
    pub spot: bool,
    /// The model meshd knows it as, and its Blender Open Data score per GPU.
    pub model: Option<String>,
    pub score_per_gpu: Option<u32>,
}

impl Offer {
    /// Fills in the model and score from the GPU name.
    pub fn with_speed(mut self) -> Self {
        if let Some((name, score)) = speed::lookup(&self.gpu, self.vram_gb) {
            self.model = Some(name.to_string());
            self.score_per_gpu = Some(score);
        }
        self
    }

    /// Score of the whole machine: one render slot per GPU.
    pub fn score(&self) -> Option<f64> {
        self.score_per_gpu
            .map(|s| f64::from(s) * f64::from(self.gpus.max(1)))
    }

    /// Dollars per hour per 1,000 points of score: lower is better value.
    pub fn usd_per_kscore(&self) -> Option<f64> {
        self.score()
            .filter(|s| *s > 0.0)
            .map(|s| self.usd_per_hour / (s / 1000.0))
    }
}

/// What the user asks for (`meshd cloud offers` flags; part of a rent request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// A GPU model, any spelling [`speed::key`] accepts.
    pub gpu: Option<String>,
    pub min_vram_gb: Option<f64>,
    /// Whole machine, $/h.
    pub max_usd_per_hour: Option<f64>,
    pub country: Option<String>,
    pub min_reliability: Option<f64>,
    pub spot: bool,
}

impl Filter {
    /// Whether `o` meets every condition. Providers filter too where they can; this is
    /// the check that holds whatever they did.
    pub fn accepts(&self, o: &Offer) -> bool {
        self.gpu
            .as_ref()
            .is_none_or(|g| speed::key(g) == speed::key(&o.gpu))
            // Reported memory is imprecise by a few percent (a 24 GB card shows 23.6).
            && self.min_vram_gb.is_none_or(|v| o.vram_gb >= v * 0.93)
            && self.max_usd_per_hour.is_none_or(|p| o.usd_per_hour <= p)
            && self
                .country
                .as_ref()
                .is_none_or(|c| o.country.as_deref().is_some_and(|oc| oc.eq_ignore_ascii_case(c)))
            && self
                .min_reliability
                .is_none_or(|r| o.reliability.is_some_and(|or| or >= r))
            && o.spot == self.spot
    }
}

/// Best value first: least dollars per unit of speed; offers of unknown speed after all
/// others, cheapest first. Ties by price, then id, so the order is stable.
pub fn rank(offers: &mut [Offer]) {
    offers.sort_by(|a, b| {
        let key = |o: &Offer| o.usd_per_kscore().unwrap_or(f64::INFINITY);
        key(a)
            .total_cmp(&key(b))
            .then(a.usd_per_hour.total_cmp(&b.usd_per_hour))
            .then(a.id.cmp(&b.id))
    });
}

/// A job to price: `frames` frames that take `secs_per_frame` each on a GPU of score
/// `ref_score`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    pub frames: u32,
    pub secs_per_frame: f64,
    pub ref_score: u32,
}

/// The workload of a job's `remaining` frames, from frames already rendered: each as its
/// render time in seconds and the Open Data score of the GPU that rendered it (`None`: a CPU
/// or an unmeasured model, not counted). A frame's cost is taken as seconds times score (the
/// same frame takes half as long on a GPU of twice the score); the mean over the measured
/// frames. `None` when no frame was measured on a known GPU.
pub fn measured_workload(rendered: &[(f64, Option<u32>)], remaining: u32) -> Option<Workload> {
    let costs: Vec<f64> = rendered
        .iter()
        .filter_map(|(secs, score)| Some(secs * f64::from((*score)?)))
        .filter(|c| c.is_finite() && *c > 0.0)
        .collect();
    if costs.is_empty() {
        return None;
    }
    let mean = costs.iter().sum::<f64>() / costs.len() as f64;
    Some(Workload {
        frames: remaining,
        secs_per_frame: mean / 1000.0,
        ref_score: 1000,
    })
}

/// Time and cost of a workload on `count` machines like `offer`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    pub hours: f64,
    pub usd: f64,
}

/// Minutes a rented machine is paid for before it renders (start, bootstrap, project
/// download): a rough allowance, shown in the estimate.
pub const STARTUP_MINUTES: f64 = 5.0;

/// Render time scales with the inverse of the score (Open Data scores are linear), each
/// GPU renders its own frames; every machine is paid from its start, [`STARTUP_MINUTES`]
/// before it renders. `None` when the offer's speed is unknown.
pub fn estimate(offer: &Offer, count: u32, w: &Workload) -> Option<Estimate> {
    let score = offer.score_per_gpu? as f64;
    if score <= 0.0 || w.ref_score == 0 {
        return None;
    }
    let secs = w.secs_per_frame * f64::from(w.ref_score) / score;
    let slots = f64::from(offer.gpus.max(1) * count.max(1));
    let render_hours = f64::from(w.frames) * secs / slots / 3600.0;
    let hours = render_hours + STARTUP_MINUTES / 60.0;
    Some(Estimate {
        hours,
        usd: hours * offer.usd_per_hour * f64::from(count.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_measured_frames_price_the_rest_by_gpu_speed() {
        // 20 s on a 4090 (11,078) and 40 s on a GPU of half its score cost the same.
        let w = measured_workload(
            &[(20.0, Some(11_078)), (40.0, Some(5_539)), (9.0, None)],
            100,
        )
        .unwrap();
        assert_eq!(w.frames, 100);
        assert!((w.secs_per_frame * f64::from(w.ref_score) - 221_560.0).abs() < 1e-6);
        let offer = Offer {
            provider: Provider::Vast,
            id: 1,
            gpu: "RTX 4090".into(),
            gpus: 1,
            vram_gb: 24.0,
            usd_per_hour: 0.5,
            reliability: None,
            country: None,
            spot: false,
            model: None,
            score_per_gpu: Some(11_078),
        };
        let e = estimate(&offer, 1, &w).unwrap();
        // 100 frames of 20 s on one 4090, plus start-up.
        assert!((e.hours - (2000.0 / 3600.0 + STARTUP_MINUTES / 60.0)).abs() < 1e-9);
        assert!(measured_workload(&[(10.0, None)], 5).is_none());
    }

    fn offer(id: u64, gpu: &str, gpus: u32, usd: f64) -> Offer {
        Offer {
            provider: Provider::Vast,
            id,
            gpu: gpu.into(),
            gpus,
            vram_gb: 24.0,
            usd_per_hour: usd,
            reliability: Some(0.99),
            country: Some("US".into()),
            spot: false,
            model: None,
            score_per_gpu: None,
        }
        .with_speed()
    }

    #[test]
    fn ranked_by_price_per_unit_of_speed_unknown_last() {
        let mut offers = vec![
            offer(1, "RTX 3090", 1, 0.25),    // 0.0463 $/h per 1k
            offer(2, "RTX 4090", 1, 0.40),    // 0.0361
            offer(3, "Mystery GPU", 1, 0.01), // unknown speed
            offer(4, "RTX 4090", 2, 0.70),    // 0.0316: two GPUs, two slots
            offer(5, "RTX A6000", 1, 0.55),   // 0.1089
        ];
        rank(&mut offers);
        let ids: Vec<u64> = offers.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![4, 2, 1, 5, 3]);
        let per = offers[0].usd_per_kscore().unwrap();
        assert!((per - 0.70 / 22.156).abs() < 1e-9, "{per}");
    }

    #[test]
    fn filters_hold_whatever_the_provider_sent() {
        let o = offer(1, "NVIDIA GeForce RTX 4090", 1, 0.4);
        let f = |f: Filter| f.accepts(&o);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            gpu: Some("rtx 4090".into()),
            min_vram_gb: Some(24.0),
            max_usd_per_hour: Some(0.4),
            country: Some("us".into()),
            min_reliability: Some(0.99),
            spot: false,
        }));
        assert!(!f(Filter {
            gpu: Some("RTX 3090".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            min_vram_gb: Some(32.0),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            max_usd_per_hour: Some(0.39),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            country: Some("DE".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            min_reliability: Some(0.995),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            spot: true,
            ..Filter::default()
        }));
    }

    #[test]
    fn a_job_costs_its_frames_at_the_offers_speed() {
        // 250 frames of 60 s on an RTX 3090 (5,398), on one RTX 4090 (11,078) at $0.40/h.
        let w = Workload {
            frames: 250,
            secs_per_frame: 60.0,
            ref_score: 5_398,
        };
        let o = offer(1, "RTX 4090", 1, 0.40);
        let e = estimate(&o, 1, &w).unwrap();
        let render_h = 250.0 * 60.0 * 5_398.0 / 11_078.0 / 3600.0;
        assert!((e.hours - (render_h + 5.0 / 60.0)).abs() < 1e-9);
        assert!((e.usd - e.hours * 0.40).abs() < 1e-9);
        // Four machines: a quarter of the render time each, four start-ups paid.
        let e4 = estimate(&o, 4, &w).unwrap();
        assert!((e4.hours - (render_h / 4.0 + 5.0 / 60.0)).abs() < 1e-9);
        assert!((e4.usd - e4.hours * 0.40 * 4.0).abs() < 1e-9);
        assert!(estimate(&offer(2, "Mystery", 1, 0.1), 1, &w).is_none());
    }
}
