//! G.711 μ-law (ITU-T G.711, the North American telephone companding law): 14-bit linear PCM
//! ↔ 8-bit codes, as phone networks and Twilio Media Streams carry audio (8 kHz, mono).
//!
//! A sample is clipped to ±32,635, biased by 132 (0x84), and coded as a sign bit, a 3-bit
//! segment (the position of the highest set bit) and the 4 bits after it; every bit of the
//! code is then inverted. Decoding rebuilds the segment's midpoint.

/// The bias added before coding, so that every segment starts at a power of two.
const BIAS: i32 = 0x84;
/// The largest magnitude that still codes without overflowing the top segment.
const CLIP: i32 = 32_635;

/// Codes one 16-bit linear sample as μ-law.
pub fn encode_sample(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0x00
    };
    let biased = magnitude.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7 (0 to 7).
    let segment = (31 - (biased >> 7).max(1).leading_zeros()) as u8;
    let mantissa = ((biased >> (segment + 3)) & 0x0F) as u8;
    !(sign | (segment << 4) | mantissa)
}

/// Decodes one μ-law code to 16-bit linear PCM.
pub fn decode_sample(code: u8) -> i16 {
    let code = !code;
    let segment = (code >> 4) & 0x07;
    let mantissa = i32::from(code & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << segment) - BIAS;
    // At most (15·8 + 132)·128 − 132 = 32,124: always fits.
    let value = if code & 0x80 != 0 { -magnitude } else { magnitude };
    value as i16
}

/// Codes a block of PCM samples.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&sample| encode_sample(sample)).collect()
}

/// Decodes a block of μ-law codes.
pub fn decode(codes: &[u8]) -> Vec<i16> {
    codes.iter().map(|&code| decode_sample(code)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of the standard decoding table (ITU-T G.711, Table 2a, as 16-bit PCM).
    #[test]
    fn decodes_the_standard_table_values() {
        let table: &[(u8, i16)] = &[
            (0x00, -32124),
            (0x01, -31100),
            (0x0F, -16764),
            (0x10, -15996),
            (0x20, -7932),
            (0x30, -3900),
            (0x40, -1884),
            (0x50, -876),
            (0x60, -372),
            (0x70, -120),
            (0x7E, -8),
            (0x7F, 0),
            (0x80, 32124),
            (0x81, 31100),
            (0xEF, 132),
            (0xF0, 120),
            (0xFE, 8),
            (0xFF, 0),
        ];
        for &(code, expected) in table {
            assert_eq!(decode_sample(code), expected, "code {code:#04x}");
        }
    }

    #[test]
    fn encodes_the_standard_codes() {
        let table: &[(i16, u8)] = &[
            (0, 0xFF),
            (-1, 0x7F),
            (8, 0xFE),
            (-8, 0x7E),
            (120, 0xF0),
            (-120, 0x70),
            (132, 0xEF),
            (32124, 0x80),
            (i16::MAX, 0x80),
            (i16::MIN, 0x00),
            (-32124, 0x00),
        ];
        for &(sample, expected) in table {
            assert_eq!(encode_sample(sample), expected, "sample {sample}");
        }
    }

    /// Every code survives decoding and coding again (the two halves agree), except the
    /// negative zero, which codes as positive zero.
    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let again = encode_sample(decode_sample(code));
            if code == 0x7F {
                assert_eq!(again, 0xFF);
            } else {
                assert_eq!(again, code, "code {code:#04x}");
            }
        }
    }

    /// Coding error stays within half a quantisation step of the segment (1/32 of the value,
    /// roughly), as companding promises.
    #[test]
    fn coding_error_is_bounded_relative_to_the_sample() {
        for sample in (-32_000i32..=32_000).step_by(37) {
            let sample = sample as i16;
            let decoded = decode_sample(encode_sample(sample));
            let error = (i32::from(decoded) - i32::from(sample)).abs();
            let bound = (i32::from(sample).abs() / 16).max(8);
            assert!(error <= bound, "{sample} decoded as {decoded}");
        }
    }

    #[test]
    fn blocks_code_sample_by_sample() {
        let samples = [0i16, 1000, -1000, 20000];
        assert_eq!(decode(&encode(&samples)).len(), 4);
        assert_eq!(encode(&samples)[0], 0xFF);
    }
}
