//! Echo detection: is what the caller's side sends just the agent's own audio coming back
//! (a speakerphone, a handset without echo cancellation), delayed and attenuated?
//!
//! Both streams (16 kHz) are reduced to 2 kHz by averaging blocks of 8 samples, which keeps
//! the speech band where most of its energy lies and makes the search cheap. The last 128 ms
//! heard are compared with the played audio at every delay up to the maximum by normalised
//! cross-correlation; a correlation of at least [`ECHO_CORRELATION`] at some delay means the
//! caller's side carries (mostly) the agent's audio. Attenuation does not matter (the measure
//! is normalised); a caller speaking over the echo lowers the correlation, so real speech
//! still counts.

use std::collections::VecDeque;

/// Samples per block of the reduced streams (16 kHz → 2 kHz).
const DECIMATION: usize = 8;
/// The reduced rate, in samples per second.
const REDUCED_RATE: usize = 16_000 / DECIMATION;
/// The stretch of heard audio compared, in reduced samples (128 ms).
const WINDOW: usize = REDUCED_RATE * 128 / 1000;
/// The correlation at or above which heard audio counts as echo.
pub const ECHO_CORRELATION: f32 = 0.6;
/// Heard audio quieter than this (RMS, full scale 1) is silence, never echo.
const SILENCE_RMS: f32 = 1e-4;

/// Compares what the caller's side sends with what the agent played.
#[derive(Debug, Clone)]
pub struct EchoDetector {
    max_delay: usize,
    played: Reduced,
    heard: Reduced,
}

/// A stream reduced to [`REDUCED_RATE`], keeping its last `capacity` samples.
#[derive(Debug, Clone)]
struct Reduced {
    samples: VecDeque<f32>,
    capacity: usize,
    block_sum: f32,
    block_len: usize,
}

impl Reduced {
    fn new(capacity: usize) -> Self {
        Self { samples: VecDeque::with_capacity(capacity), capacity, block_sum: 0.0, block_len: 0 }
    }

    fn push(&mut self, samples: &[f32]) {
        for sample in samples {
            self.block_sum += sample;
            self.block_len += 1;
            if self.block_len == DECIMATION {
                if self.samples.len() == self.capacity {
                    self.samples.pop_front();
                }
                self.samples.push_back(self.block_sum / DECIMATION as f32);
                self.block_sum = 0.0;
                self.block_len = 0;
            }
        }
    }
}

impl EchoDetector {
    /// A detector that finds echo delayed by up to `max_delay_ms`.
    pub fn new(max_delay_ms: u32) -> Self {
        let max_delay = REDUCED_RATE * max_delay_ms as usize / 1000;
        Self { max_delay, played: Reduced::new(max_delay + WINDOW), heard: Reduced::new(WINDOW) }
    }

    /// The agent's audio as it is played (16 kHz); silence too, so time keeps step with the
    /// caller's audio.
    pub fn played(&mut self, samples: &[f32]) {
        self.played.push(samples);
    }

    /// The caller's side's audio as it arrives (16 kHz).
    pub fn heard(&mut self, samples: &[f32]) {
        self.heard.push(samples);
    }

    /// The best normalised correlation of the last 128 ms heard with the played audio over
    /// every delay, with that delay in milliseconds; `None` while there is too little audio,
    /// or when the heard audio is silent.
    pub fn correlation(&self) -> Option<(f32, u32)> {
        let heard = &self.heard.samples;
        if heard.len() < WINDOW || self.played.samples.len() < WINDOW {
            return None;
        }
        let heard: Vec<f32> = heard.iter().copied().collect();
        let heard_energy: f32 = heard.iter().map(|x| x * x).sum();
        if (heard_energy / WINDOW as f32).sqrt() < SILENCE_RMS {
            return None;
        }
        let played: Vec<f32> = self.played.samples.iter().copied().collect();
        // Energy of every played window, from running sums of squares.
        let mut squares = Vec::with_capacity(played.len() + 1);
        squares.push(0.0_f64);
        for sample in &played {
            let last = squares[squares.len() - 1];
            squares.push(last + f64::from(sample * sample));
        }
        let newest_start = played.len() - WINDOW;
        let mut best = (0.0_f32, 0_u32);
        for delay in 0..=self.max_delay.min(newest_start) {
            let start = newest_start - delay;
            let segment = &played[start..start + WINDOW];
            let energy = squares[start + WINDOW] - squares[start];
            if energy <= 1e-12 {
                continue;
            }
            let dot: f32 = segment.iter().zip(&heard).map(|(a, b)| a * b).sum();
            let correlation = (f64::from(dot) / (energy * f64::from(heard_energy)).sqrt()) as f32;
            if correlation > best.0 {
                best = (correlation, u32::try_from(delay * 1000 / REDUCED_RATE).unwrap_or(u32::MAX));
            }
        }
        Some(best)
    }

    /// True when the last 128 ms heard are the agent's own audio coming back.
    pub fn is_echo(&self) -> bool {
        self.correlation().is_some_and(|(correlation, _)| correlation >= ECHO_CORRELATION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speech-like test signal: a few drifting tones under a syllable-rate envelope.
    fn voice(samples: usize, seed: f32, base_pitch: f32) -> Vec<f32> {
        (0..samples)
            .map(|n| {
                let t = n as f32 / 16_000.0;
                let envelope = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 4.0 * t + seed).sin();
                let pitch = base_pitch + 30.0 * (2.0 * std::f32::consts::PI * 0.7 * t + seed).sin();
                let phase = 2.0 * std::f32::consts::PI * pitch * t;
                envelope * 0.3 * (phase.sin() + 0.5 * (2.0 * phase + seed).sin() + 0.25 * (3.3 * phase).sin())
            })
            .collect()
    }

    fn noise(samples: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..samples)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Plays `agent` while the caller's side sends `heard`, both in 20 ms steps; returns the
    /// detector's verdicts once enough audio passed.
    fn run(agent: &[f32], heard: &[f32]) -> Vec<(f32, u32)> {
        let mut detector = EchoDetector::new(600);
        let mut verdicts = Vec::new();
        for (played, heard) in agent.chunks(320).zip(heard.chunks(320)) {
            detector.played(played);
            detector.heard(heard);
            if let Some(verdict) = detector.correlation() {
                verdicts.push(verdict);
            }
        }
        verdicts
    }

    #[test]
    fn delayed_attenuated_playback_is_echo_at_its_delay() {
        let agent = noise(16_000 * 2, 7);
        for delay_ms in [50_usize, 200, 400] {
            let delay = delay_ms * 16;
            let mut heard = vec![0.0; delay];
            heard.extend(agent.iter().map(|sample| sample * 0.5));
            heard.truncate(agent.len());
            let verdicts = run(&agent, &heard);
            let settled = &verdicts[verdicts.len() / 2..];
            assert!(settled.iter().all(|(correlation, _)| *correlation >= ECHO_CORRELATION), "{delay_ms}: {settled:?}");
            let (_, found) = settled[settled.len() - 1];
            assert!((found as i64 - delay_ms as i64).abs() <= 1, "delay {delay_ms} ms found as {found} ms");
        }
    }

    #[test]
    fn the_caller_speaking_is_not_echo() {
        let agent = voice(16_000 * 2, 0.0, 120.0);
        let caller: Vec<f32> =
            voice(16_000 * 2, 2.1, 230.0).iter().zip(noise(16_000 * 2, 3)).map(|(v, n)| v * 0.8 + n * 0.05).collect();
        let verdicts = run(&agent, &caller);
        assert!(!verdicts.is_empty());
        let echoes = verdicts.iter().filter(|(correlation, _)| *correlation >= ECHO_CORRELATION).count();
        assert!(echoes * 10 <= verdicts.len(), "{echoes} of {} caller windows taken for echo", verdicts.len());
    }

    #[test]
    fn the_caller_speaking_over_the_echo_is_not_echo() {
        let agent = noise(16_000 * 2, 11);
        let caller = noise(16_000 * 2, 12);
        let delay = 200 * 16;
        let heard: Vec<f32> = (0..agent.len())
            .map(|n| caller[n] * 0.8 + if n >= delay { agent[n - delay] * 0.3 } else { 0.0 })
            .collect();
        let verdicts = run(&agent, &heard);
        assert!(verdicts.iter().all(|(correlation, _)| *correlation < ECHO_CORRELATION), "{verdicts:?}");
    }

    #[test]
    fn silence_is_neither_speech_nor_echo() {
        let agent = noise(16_000, 5);
        assert!(run(&agent, &vec![0.0; agent.len()]).is_empty());
        let mut detector = EchoDetector::new(600);
        detector.heard(&noise(16_000, 1));
        assert_eq!(detector.correlation(), None, "nothing played yet");
        assert!(!detector.is_echo());
    }
}
