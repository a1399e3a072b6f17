//! Sample-rate conversion for the voice pipeline: calls arrive at 48 kHz, voice activity
//! detection and speech recognition want 16 kHz, and the Piper voice speaks at 22,050 Hz.
//!
//! [`StreamResampler`] converts mono f32 audio between any two rates as it streams in pieces of
//! any size, with rubato's FFT resampler (band-limited, so nothing above the lower rate's Nyquist
//! frequency folds back as noise). Its output is aligned with its input: the resampler's start-up
//! delay is trimmed, and [`StreamResampler::finish`] flushes the tail, so `n` input samples give
//! `round(n × to / from)` output samples in all.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::error::ModelError;

const MODEL: &str = "resampler";

/// A streaming mono resampler from one sample rate to another.
pub struct StreamResampler {
    from_hz: u32,
    to_hz: u32,
    /// `None` when both rates are equal: samples pass through untouched.
    fft: Option<Fft<f32>>,
    /// Input waiting for a full chunk.
    pending: Vec<f32>,
    /// Scratch space for one chunk's output.
    scratch: Vec<f32>,
    /// Output frames still to drop (the resampler's start-up delay).
    to_trim: usize,
    input_total: u64,
    output_total: u64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StreamResampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl StreamResampler {
    /// A resampler from `from_hz` to `to_hz` (each 1 Hz … 384 kHz), working in chunks of about 20 ms.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ModelError> {
        let valid = 1..=384_000;
        if !valid.contains(&from_hz) || !valid.contains(&to_hz) {
            return Err(ModelError::InvalidRequest {
                model: MODEL.to_owned(),
                reason: format!("cannot resample from {from_hz} Hz to {to_hz} Hz"),
            });
        }
        let fft = if from_hz == to_hz {
            None
        } else {
            let chunk = (from_hz as usize / 50).max(1);
            let fft = Fft::<f32>::new(from_hz as usize, to_hz as usize, chunk, 1, FixedSync::Input)
                .map_err(|error| ModelError::InvalidRequest { model: MODEL.to_owned(), reason: error.to_string() })?;
            Some(fft)
        };
        let (scratch, to_trim) = match &fft {
            Some(fft) => (vec![0.0; fft.output_frames_max()], fft.output_delay()),
            None => (Vec::new(), 0),
        };
        Ok(Self { from_hz, to_hz, fft, pending: Vec::new(), scratch, to_trim, input_total: 0, output_total: 0 })
    }

    /// The input rate.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// The output rate.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Resamples the next piece of the stream; returns what is ready (input short of a whole
    /// chunk waits for the next call or for [`finish`](Self::finish)).
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.input_total += samples.len() as u64;
        let Some(fft) = self.fft.as_mut() else {
            self.output_total += samples.len() as u64;
            return Ok(samples.to_vec());
        };
        self.pending.extend_from_slice(samples);
        let mut output = Vec::with_capacity(
            (self.pending.len() as f64 * f64::from(self.to_hz) / f64::from(self.from_hz)) as usize + 16,
        );
        let chunk = fft.input_frames_next();
        let mut start = 0;
        while self.pending.len() - start >= chunk {
            let produced = run(fft, &self.pending[start..start + chunk], None, &mut self.scratch)?;
            start += chunk;
            Self::keep(&mut self.to_trim, &mut self.output_total, &self.scratch[..produced], &mut output, None);
        }
        self.pending.drain(..start);
        Ok(output)
    }

    /// Ends the stream: resamples what is still pending and returns the rest of the output. The
    /// resampler is then ready for a new stream.
    pub fn finish(&mut self) -> Result<Vec<f32>, ModelError> {
        let expected = (self.input_total as f64 * f64::from(self.to_hz) / f64::from(self.from_hz)).round() as u64;
        let mut output = Vec::new();
        if let Some(fft) = self.fft.as_mut() {
            let chunk = fft.input_frames_next();
            let mut real = self.pending.len();
            let mut input = std::mem::take(&mut self.pending);
            input.resize(chunk, 0.0);
            // The first call carries the real pending samples; later ones push silence through
            // until everything that went in has come out.
            let mut rounds = 0;
            while self.output_total < expected {
                let produced = run(fft, &input, Some(real), &mut self.scratch)?;
                Self::keep(
                    &mut self.to_trim,
                    &mut self.output_total,
                    &self.scratch[..produced],
                    &mut output,
                    Some(expected),
                );
                real = 0;
                rounds += 1;
                if rounds > 1_000 {
                    return Err(ModelError::Inference {
                        model: MODEL.to_owned(),
                        reason: "the flush did not finish".to_owned(),
                    });
                }
            }
            fft.reset();
            self.to_trim = fft.output_delay();
        }
        self.pending.clear();
        self.input_total = 0;
        self.output_total = 0;
        Ok(output)
    }

    /// Appends `produced` to `output`, first dropping start-up delay, never beyond `limit` in all.
    fn keep(to_trim: &mut usize, total: &mut u64, produced: &[f32], output: &mut Vec<f32>, limit: Option<u64>) {
        let skip = (*to_trim).min(produced.len());
        *to_trim -= skip;
        let mut kept = &produced[skip..];
        if let Some(limit) = limit {
            let room = limit.saturating_sub(*total) as usize;
            kept = &kept[..kept.len().min(room)];
        }
        *total += kept.len() as u64;
        output.extend_from_slice(kept);
    }

    /// Resamples a whole clip at once.
    pub fn convert(samples: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ModelError> {
        let mut resampler = Self::new(from_hz, to_hz)?;
        let mut output = resampler.push(samples)?;
        output.extend(resampler.finish()?);
        Ok(output)
    }
}

/// One chunk through the resampler; `real` is how many input samples are real (the rest silence).
fn run(fft: &mut Fft<f32>, input: &[f32], real: Option<usize>, scratch: &mut [f32]) -> Result<usize, ModelError> {
    let failed = |reason: String| ModelError::Inference { model: MODEL.to_owned(), reason };
    let frames_out = scratch.len();
    let adapter_in = InterleavedSlice::new(input, 1, input.len()).map_err(|error| failed(error.to_string()))?;
    let mut adapter_out =
        InterleavedSlice::new_mut(scratch, 1, frames_out).map_err(|error| failed(error.to_string()))?;
    let indexing = real.map(|real| Indexing { partial_len: Some(real), ..Indexing::default() });
    let (_, produced) = fft
        .process_into_buffer(&adapter_in, &mut adapter_out, indexing.as_ref())
        .map_err(|error| failed(error.to_string()))?;
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(frequency: f64, rate: u32, seconds: f64, amplitude: f32) -> Vec<f32> {
        let count = (f64::from(rate) * seconds) as usize;
        (0..count)
            .map(|index| {
                amplitude * (2.0 * std::f64::consts::PI * frequency * index as f64 / f64::from(rate)).sin() as f32
            })
            .collect()
    }

    /// The frequency with the most energy among 50 … 4000 Hz in 5 Hz steps (a direct DFT) and
    /// the RMS, over the middle of the signal.
    fn analyse(samples: &[f32], rate: u32) -> (f64, f32) {
        let middle = &samples[samples.len() / 4..samples.len() * 3 / 4];
        let power = |frequency: f64| {
            let (mut re, mut im) = (0.0_f64, 0.0_f64);
            for (index, sample) in middle.iter().enumerate() {
                let phase = 2.0 * std::f64::consts::PI * frequency * index as f64 / f64::from(rate);
                re += f64::from(*sample) * phase.cos();
                im += f64::from(*sample) * phase.sin();
            }
            re * re + im * im
        };
        let peak =
            (10..=800).map(|step| f64::from(step) * 5.0).max_by(|a, b| power(*a).total_cmp(&power(*b))).unwrap_or(0.0);
        let rms = (middle.iter().map(|sample| sample * sample).sum::<f32>() / middle.len() as f32).sqrt();
        (peak, rms)
    }

    #[test]
    fn a_sine_keeps_its_frequency_amplitude_and_length() {
        for (from, to) in [(48_000, 16_000), (16_000, 48_000), (22_050, 48_000), (22_050, 16_000)] {
            let input = sine(440.0, from, 1.0, 0.5);
            // Streamed in uneven pieces, as audio arrives from a call.
            let mut resampler = StreamResampler::new(from, to).unwrap();
            let mut output = Vec::new();
            for piece in input.chunks(333) {
                output.extend(resampler.push(piece).unwrap());
            }
            output.extend(resampler.finish().unwrap());
            assert_eq!(output.len(), to as usize, "{from} -> {to}: one second stays one second");
            let (frequency, rms) = analyse(&output, to);
            assert_eq!(frequency, 440.0, "{from} -> {to}");
            let expected = 0.5 / 2.0_f32.sqrt();
            assert!((rms - expected).abs() < 0.01, "{from} -> {to}: rms {rms}, expected {expected}");
            // Aligned: the output follows the input with no delay left in it (the resampler's
            // delay is whole output samples, so allow the best fit one sample either way).
            let reference = sine(440.0, to, 1.0, 0.5);
            let middle = to as usize / 2;
            let error_at = |lag: usize| -> f32 {
                output[middle..middle + 200]
                    .iter()
                    .zip(&reference[middle - 3 + lag..middle - 3 + lag + 200])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max)
            };
            let best = (0..7).min_by(|a, b| error_at(*a).total_cmp(&error_at(*b))).unwrap();
            assert!((2..=4).contains(&best), "{from} -> {to}: the output lags by {} samples", 3_i32 - best as i32);
        }
    }

    #[test]
    fn frequencies_above_the_new_nyquist_are_removed() {
        // 12 kHz cannot exist at 16 kHz: it must not fold back as a 4 kHz tone.
        let output = StreamResampler::convert(&sine(12_000.0, 48_000, 0.5, 0.5), 48_000, 16_000).unwrap();
        let middle = &output[output.len() / 4..output.len() * 3 / 4];
        let rms = (middle.iter().map(|sample| sample * sample).sum::<f32>() / middle.len() as f32).sqrt();
        assert!(rms < 0.01, "rms {rms}");
    }

    #[test]
    fn equal_rates_pass_through_and_bad_rates_are_refused() {
        let input = sine(440.0, 16_000, 0.1, 0.3);
        assert_eq!(StreamResampler::convert(&input, 16_000, 16_000).unwrap(), input);
        assert!(matches!(StreamResampler::new(0, 16_000), Err(ModelError::InvalidRequest { .. })));
    }

    #[test]
    fn a_finished_resampler_starts_a_new_stream() {
        let input = sine(440.0, 48_000, 0.25, 0.5);
        let mut resampler = StreamResampler::new(48_000, 16_000).unwrap();
        let mut first = resampler.push(&input).unwrap();
        first.extend(resampler.finish().unwrap());
        let mut second = resampler.push(&input).unwrap();
        second.extend(resampler.finish().unwrap());
        assert_eq!(first.len(), 4_000);
        assert_eq!(first, second);
    }
}
