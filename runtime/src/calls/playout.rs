//! The agent's audio waiting to be played, cut into frames of exactly 20 ms.
//!
//! Sentences arrive as synthesised segments of any length; each tick of the call's 20 ms clock
//! takes one frame, across segment boundaries, with the current gain (lowered while the caller
//! speaks over the agent), and says which segments started and finished in it.

use std::collections::VecDeque;

/// One synthesised sentence.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The answer it belongs to (`None`: the disclosure or greeting).
    pub reply: Option<u64>,
    /// The text spoken, for captions and the transcript.
    pub text: String,
    /// Mono samples at the call's rate, in −1…1.
    pub samples: Vec<f32>,
    /// False for the disclosure, which the caller cannot interrupt.
    pub interruptible: bool,
}

/// A segment's text and answer, as a frame reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub reply: Option<u64>,
    pub text: String,
}

/// What one frame carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Exactly one frame of samples.
    pub samples: Vec<i16>,
    /// Segments whose first sample is in this frame.
    pub started: Vec<SegmentInfo>,
    /// Segments whose last sample is in this frame.
    pub finished: Vec<SegmentInfo>,
}

/// Queued segments and the position in the first one.
#[derive(Debug)]
pub struct Playout {
    frame_len: usize,
    segments: VecDeque<Segment>,
    /// Samples of the first segment already played.
    position: usize,
}

impl Playout {
    /// A queue producing frames of `frame_len` samples.
    pub fn new(frame_len: usize) -> Self {
        Self { frame_len: frame_len.max(1), segments: VecDeque::new(), position: 0 }
    }

    pub fn push(&mut self, segment: Segment) {
        if !segment.samples.is_empty() {
            self.segments.push_back(segment);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// True while something the caller may interrupt is queued or playing.
    pub fn has_interruptible(&self) -> bool {
        self.segments.iter().any(|segment| segment.interruptible)
    }

    /// True while the segment playing now is the disclosure.
    pub fn playing_uninterruptible(&self) -> bool {
        self.segments.front().is_some_and(|segment| !segment.interruptible)
    }

    /// True while segments of answer `reply` are queued or playing.
    pub fn has_reply(&self, reply: u64) -> bool {
        self.segments.iter().any(|segment| segment.reply == Some(reply))
    }

    /// The segment playing now, with the fraction of it already played.
    pub fn current(&self) -> Option<(&Segment, f32)> {
        let segment = self.segments.front()?;
        Some((segment, self.position as f32 / segment.samples.len().max(1) as f32))
    }

    /// Drops every interruptible segment (barge-in); the disclosure plays on.
    pub fn clear_interruptible(&mut self) {
        let playing_kept = self.segments.front().is_some_and(|segment| !segment.interruptible);
        if !playing_kept {
            self.position = 0;
        }
        self.segments.retain(|segment| !segment.interruptible);
    }

    /// The next frame at `gain`, or `None` when nothing is queued. The last frame of the
    /// queue is padded with silence.
    pub fn next_frame(&mut self, gain: f32) -> Option<Frame> {
        if self.segments.is_empty() {
            return None;
        }
        let mut frame = Frame { samples: Vec::with_capacity(self.frame_len), started: Vec::new(), finished: Vec::new() };
        while frame.samples.len() < self.frame_len {
            let Some(segment) = self.segments.front() else { break };
            if self.position == 0 {
                frame.started.push(SegmentInfo { reply: segment.reply, text: segment.text.clone() });
            }
            let take = (self.frame_len - frame.samples.len()).min(segment.samples.len() - self.position);
            frame.samples.extend(segment.samples[self.position..self.position + take].iter().map(|sample| to_i16(sample * gain)));
            self.position += take;
            if self.position == segment.samples.len() {
                frame.finished.push(SegmentInfo { reply: segment.reply, text: segment.text.clone() });
                self.segments.pop_front();
                self.position = 0;
            }
        }
        frame.samples.resize(self.frame_len, 0);
        Some(frame)
    }
}

/// A sample in −1…1 as 16-bit PCM (clipped).
pub fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(reply: Option<u64>, text: &str, len: usize, interruptible: bool) -> Segment {
        Segment { reply, text: text.to_owned(), samples: vec![0.5; len], interruptible }
    }

    #[test]
    fn segments_become_exact_frames_across_boundaries() {
        let mut playout = Playout::new(160);
        playout.push(segment(None, "first", 250, false));
        playout.push(segment(Some(1), "second", 100, true));
        let one = playout.next_frame(1.0).unwrap();
        assert_eq!(one.samples.len(), 160);
        assert_eq!(one.started, vec![SegmentInfo { reply: None, text: "first".to_owned() }]);
        assert!(one.finished.is_empty());
        let two = playout.next_frame(1.0).unwrap();
        assert_eq!(two.samples.len(), 160);
        assert_eq!(two.finished.len(), 1);
        assert_eq!(two.started[0].text, "second");
        assert!(two.samples.iter().all(|sample| *sample == to_i16(0.5)), "90 + 70 samples, no padding yet");
        let three = playout.next_frame(1.0).unwrap();
        assert_eq!(three.samples.len(), 160);
        assert_eq!(three.finished[0].reply, Some(1));
        assert_eq!(&three.samples[30..], &[0; 130][..], "the last frame is padded with silence");
        assert!(playout.next_frame(1.0).is_none());
        assert!(playout.is_empty());
    }

    #[test]
    fn gain_scales_and_clips() {
        let mut playout = Playout::new(4);
        playout.push(Segment { reply: None, text: String::new(), samples: vec![0.5, -0.5, 2.0, -2.0], interruptible: true });
        let frame = playout.next_frame(0.25).unwrap();
        assert_eq!(frame.samples, vec![to_i16(0.125), to_i16(-0.125), to_i16(0.5), to_i16(-0.5)]);
        assert_eq!(to_i16(3.0), 32767);
        assert_eq!(to_i16(-3.0), -32767);
    }

    #[test]
    fn barge_in_keeps_only_the_disclosure() {
        let mut playout = Playout::new(100);
        playout.push(segment(None, "disclosure", 150, false));
        playout.push(segment(Some(1), "answer", 300, true));
        assert!(playout.has_reply(1) && playout.has_interruptible());
        playout.next_frame(1.0).unwrap();
        assert!(playout.playing_uninterruptible());
        playout.clear_interruptible();
        assert!(!playout.has_reply(1));
        let frame = playout.next_frame(1.0).unwrap();
        assert_eq!(frame.finished[0].text, "disclosure", "the disclosure plays on from where it was");
        assert!(playout.next_frame(1.0).is_none());

        playout.push(segment(Some(2), "answer", 300, true));
        playout.next_frame(1.0).unwrap();
        let (_, played) = playout.current().unwrap();
        assert!((played - 1.0 / 3.0).abs() < 1e-6);
        playout.clear_interruptible();
        assert!(playout.is_empty());
        playout.push(segment(Some(3), "next", 100, true));
        assert_eq!(playout.next_frame(1.0).unwrap().started[0].text, "next", "a new answer starts at its beginning");
    }
}
