//! Redaction of personal data from transcript text, for agents whose storage tier is
//! `redacted`: [`redact`] replaces e-mail addresses, payment card numbers, government ids, IP
//! addresses and phone numbers with one placeholder per kind (`[email]`, `[card]`, `[id]`,
//! `[ip]`, `[phone]`) and counts what it replaced. Everything outside a match — whitespace,
//! punctuation, emoji, combining marks, line endings — is kept exactly.
//!
//! Owns: the recognisers below, small hand-written scanners over `char`s (no regular
//! expressions). Must not touch: storage, I/O or logging; [`redact`] is a pure function that
//! never panics, whatever its input.
//!
//! The recognisers prefer precision on ordinary prose: counts ("3 kids and 2 dogs"), dates
//! (`2026-11-24`, `24.11.2026`), times (`10:30`, `10:30:00`), prices (`$1,299.00`), order
//! numbers (`#12345`), version numbers (`1.2.3`) and short numbers are never redacted. The
//! price is that some unusual spellings of personal data are missed; each rule below says
//! what it deliberately leaves alone.
//!
//! # Shared rules
//!
//! - *Digit* means an ASCII digit `0`–`9`; other scripts' digits are never part of a match.
//! - A *word character* is a Unicode letter or number, `_`, or a combining mark (U+0300–036F,
//!   U+1AB0–1AFF, U+1DC0–1DFF, U+20D0–20FF, U+FE00–FE0F, U+FE20–FE2F, U+200D). No match other
//!   than an email (whose edges its own rules set) starts right after a word character or ends
//!   right before one, so `v1.2.3.4`, `ID4111111111111111` and `1234567890abc` are left alone.
//! - *Numeric boundary* (cards, SSNs and phones): besides the word-character rule, the match
//!   must not be preceded by `+`, `#` or a currency sign (`$ € £ ¥ ₹`) — so `#5551234567`
//!   stays an order number — nor touch a connector (`.` `,` `-` `/` `:`) that joins it to
//!   another digit on either side (so `1.5551234567` and `555-123-4567-8` are parts of a longer
//!   number), nor be followed by `::`.
//! - Placeholders contain no digit and no `@`, and no recogniser matches them or starts inside
//!   one, so redacting twice changes nothing (see *Order* below).
//!
//! # Recognisers
//!
//! **Email** (`[email]`): `local@domain`. The local part is the run of at most 64 letters,
//! numbers, combining marks and `. _ % + -` immediately before the `@` (leading dots are left
//! outside). The domain is two or more labels separated by single dots; a label is letters,
//! numbers and combining marks, with inner hyphens. The last label (the top-level domain) is at
//! least two letters, or a punycode `xn--…` label. The domain is the *longest* such prefix of
//! what follows the `@` (at most 253 characters), so a trailing full stop, a dash or digits
//! glued to the address (`a@b.com.4111…`, `a@b.com-thanks`) stay outside. Unicode letters are
//! allowed throughout (`josé@correo.es`, `用户@例子.中国`). Not matched: `@handle`, `user@localhost`
//! (one label), `a@b.c` (one-letter top-level domain), `a@1.2.3.4` (numeric top-level domain;
//! the address part is still redacted as an IP), quoted local parts and IP-literal domains.
//!
//! **Payment card** (`[card]`): 13 to 19 digits that pass the Luhn check and do not start with
//! `0` (ISO/IEC 7812 issues no payment cards under major industry identifier 0, and this keeps
//! runs of zeros out). Written either as one unbroken run, or in groups separated by single
//! spaces or by single hyphens (one kind throughout): a first group of exactly 4 digits and
//! further groups of 3 to 6 (`4111 1111 1111 1111`, `5500-0000-0000-0004`,
//! `3782 822463 10005`). When more groups follow, the longest leading set of groups that
//! qualifies is taken (`4111 1111 1111 1111 12/27` keeps the expiry date). Numeric boundary
//! applies. Not matched: Luhn failures (they may still be phones), runs of 20 or more digits,
//! mixed separators, groupings that do not start with 4 digits (`4222 2222 2222 2`), and a
//! number right after `+`, which is treated as a phone number.
//!
//! **Government id** (`[id]`):
//! - US Social Security number `ddd-dd-dddd`, hyphens required, with area not `000`, `666` or
//!   `900`–`999` (the 9xx range is ITINs and unissued), group not `00` and serial not `0000`.
//!   Numeric boundary applies. Not matched: SSNs written with spaces or without separators
//!   (nine-digit numbers are too common in prose).
//! - UK National Insurance number: two letters, six digits, a suffix letter `A`–`D`, with
//!   optional single spaces before each digit pair and before the suffix (`AB123456C`,
//!   `AB 12 34 56 C`, `AB 123456 C`). The first letter is not D, F, I, Q, U or V; the second
//!   is not D, F, I, O, Q, U or V; the prefixes BG, GB, KN, NK, NT, TN and ZZ are not
//!   allocated (so HMRC's specimen `QQ 12 34 56 C` is not matched). The unspaced form may be
//!   in any case; the spaced form must be upper case, since lower-case letters and digit pairs
//!   are too easily prose. Word-character rule applies.
//! - Deliberately left out: passport, driving licence and tax numbers, other countries'
//!   national ids, and bank account numbers and IBANs (their formats collide with ordinary
//!   numbers and codes without a checksum or context this module does not have).
//!
//! **IP address** (`[ip]`):
//! - IPv6: full (eight groups) or `::`-compressed (at most seven groups and exactly one `::`)
//!   forms; groups of 1–4 hex digits; the final group may be an embedded IPv4 dotted quad
//!   counting as two groups (`::ffff:192.0.2.1`). At least one decimal digit is required, so
//!   code paths such as `a::b` or `dead::beef` are left alone. It must not follow a word
//!   character, `:` or `.`, nor be followed by a word character; one trailing `.` or `:` is
//!   left outside (sentence punctuation). A zone (`%eth0`) or prefix length (`/64`) is left
//!   outside. Not matched: times (`10:30:00`), MAC addresses (six groups, no `::`).
//! - IPv4: four decimal octets 0–255 separated by dots, no leading zeros (`01.02.03.04` is not
//!   an address). It must not follow a word character or a `.`, nor be followed by a word
//!   character, by `.` and a digit (so `1.2.3.4.5` is a longer dotted number) or by `::`.
//!   A port (`:8080`), prefix length (`/24`) or range dash stays outside.
//!
//! **Phone** (`[phone]`), numeric boundary applies to each form:
//! - International: `+` then 8 to 15 digits, with single spaces, hyphens or dots between digit
//!   groups and at most one parenthesised group (`+44 20 7946 0958`, `+1 (555) 123-4567`,
//!   `+44 (0) 20 7946 0958`, `+4915112345678`). The last group of a multi-group number has at
//!   least 2 digits; with more digits than 15, the longest qualifying prefix is taken.
//! - National, separated: 10 or 11 digits in one of
//!   - `(area) rest`: 2–5 digits in parentheses, an optional space, then groups of 2–8 digits
//!     (`(555) 123-4567`, `(030) 1234567`);
//!   - North American `ddd-ddd-dddd` or `1-ddd-ddd-dddd`, with spaces, hyphens or dots
//!     (`555-123-4567`, `555.123.4567`, `1 800 555 0199`);
//!   - trunk-prefixed: a first group of 2–5 digits starting with `0`, then up to four groups of
//!     2–8 digits, one separator kind throughout (`07700 900123`, `030 1234567`,
//!     `020 7946 0958`, `01 23 45 67 89`, `03-1234-5678`); `/` is accepted only between
//!     exactly two groups (`030/1234567`).
//! - National, unbroken: exactly 10 digits starting with `0` or `2`–`9`, or exactly 11 digits
//!   starting with `0` or with `1` and then `2`–`9` (North American area codes never start
//!   with `0` or `1`, which keeps ten-digit Unix timestamps such as `1732406400` out).
//! - Not matched: numbers of 9 or fewer digits (`555-0199`, local numbers), other groupings
//!   without a leading `+`, `(` or `0` (`12 34 56 78 90`), extensions (`ext. 12` stays), dates,
//!   times and IP addresses. An unbroken 10- or 11-digit number in prose *is* taken as a phone
//!   number when its leading digit fits, unless it follows `#`.
//!
//! # Order
//!
//! Recognisers run one after another, most specific first: email, card, government id, IPv6,
//! IPv4, phone. Each pass sees the text with the earlier passes' placeholders already in place,
//! and matches never overlap. Redaction then repeats on its own output until a round finds
//! nothing (at most eight rounds), because a placeholder can free a neighbour that the
//! raw text made ambiguous (in `10.0.0.1-4111111111111111` the card is only clear once the
//! address is gone). Hence `redact(&redact(x).text)` returns its input unchanged with no
//! counts, given that the rounds settle within the bound: no input found needs more than three
//! rounds that replace something, and the tests check settling and idempotence on random input.
//!
//! Each pass is linear in the length of the text (every scanner looks a bounded distance
//! ahead of a candidate start), so a 100 KB message takes a few milliseconds; callers on an
//! async path with large texts should still hand the work to a blocking thread.

use std::collections::BTreeMap;
use std::ops::Range;

/// A category of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    Email,
    Phone,
    PaymentCard,
    GovernmentId,
    IpAddress,
}

impl PiiKind {
    /// The text that replaces a match of this kind.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[email]",
            PiiKind::Phone => "[phone]",
            PiiKind::PaymentCard => "[card]",
            PiiKind::GovernmentId => "[id]",
            PiiKind::IpAddress => "[ip]",
        }
    }
}

/// Text with personal data replaced, and how many matches of each kind were replaced (kinds
/// with no match are absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub counts: BTreeMap<PiiKind, usize>,
}

/// Rounds of all passes before redaction stops even if the last round still found something.
/// Ordinary text settles in one round (a second finds nothing); the bound only keeps the
/// running time linear on contrived input.
const MAX_ROUNDS: usize = 8;

/// Replaces personal data in `text` with placeholders; see the module documentation for the
/// exact rules.
pub fn redact(text: &str) -> Redacted {
    redact_counting_rounds(text).0
}

type Recogniser = fn(&[char]) -> Vec<Range<usize>>;

/// The personal data of one kind in `text`, as written (e.g. every email address a message
/// mentions). Finds what one redaction pass of that kind would replace.
pub fn find(text: &str, kind: PiiKind) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    PASSES
        .iter()
        .filter(|(pass_kind, _)| *pass_kind == kind)
        .flat_map(|(_, recognise)| recognise(&chars))
        .map(|range| chars[range].iter().collect())
        .collect()
}

/// The passes, most specific first.
const PASSES: [(PiiKind, Recogniser); 6] = [
    (PiiKind::Email, find_emails),
    (PiiKind::PaymentCard, find_cards),
    (PiiKind::GovernmentId, find_government_ids),
    (PiiKind::IpAddress, find_ipv6),
    (PiiKind::IpAddress, find_ipv4),
    (PiiKind::Phone, find_phones),
];

/// Redacts and also says how many rounds ran and whether the last one found nothing.
fn redact_counting_rounds(text: &str) -> (Redacted, usize, bool) {
    let mut counts = BTreeMap::new();
    let mut current = text.to_owned();
    let mut rounds = 0;
    let mut settled = false;
    while rounds < MAX_ROUNDS {
        // Every recogniser's match contains a digit or an `@`, and placeholders contain
        // neither, so text without them is final.
        if !current.bytes().any(|byte| byte.is_ascii_digit() || byte == b'@') {
            settled = true;
            break;
        }
        rounds += 1;
        let mut chars: Vec<char> = current.chars().collect();
        let mut replaced_this_round = 0;
        for (kind, find) in PASSES {
            let spans = find(&chars);
            if spans.is_empty() {
                continue;
            }
            replaced_this_round += spans.len();
            *counts.entry(kind).or_insert(0) += spans.len();
            current = replace_spans(&chars, &spans, kind.placeholder());
            chars = current.chars().collect();
        }
        if replaced_this_round == 0 {
            settled = true;
            break;
        }
    }
    (Redacted { text: current, counts }, rounds, settled)
}

/// Rebuilds the text with each span (sorted, non-overlapping char ranges) replaced.
fn replace_spans(chars: &[char], spans: &[Range<usize>], placeholder: &str) -> String {
    let mut out = String::with_capacity(chars.len() + spans.len() * placeholder.len());
    let mut next = 0;
    for span in spans {
        debug_assert!(next <= span.start && span.start < span.end && span.end <= chars.len());
        out.extend(chars.get(next..span.start).unwrap_or_default());
        out.push_str(placeholder);
        next = next.max(span.end);
    }
    out.extend(chars.get(next..).unwrap_or_default());
    out
}

// ---------------------------------------------------------------------------------------------
// Character classes and boundaries

/// Punctuation that joins two numbers into one longer token (`1.5`, `2026-11`, `1,299`).
const CONNECTORS: [char; 5] = ['.', ',', '-', '/', ':'];

/// Characters that, right before a number, say it is not personal data of the kind being
/// looked for: an order or reference number, an amount, or (for cards and national phone
/// numbers) an international phone number.
const NUMERIC_PREFIXES: [char; 7] = ['+', '#', '$', '€', '£', '¥', '₹'];

/// What a position inside the previous match of the current pass reads as: the edge of the
/// placeholder that will replace it.
const PLACEHOLDER_EDGE: char = ']';

fn is_combining_mark(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FE20}'..='\u{FE2F}'
            | '\u{200D}'
    )
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || is_combining_mark(c)
}

/// One pass's view of the text: the characters, and the matches found so far (left to right).
struct Scan<'a> {
    chars: &'a [char],
    spans: Vec<Range<usize>>,
    /// End of the last match; positions before it are already taken.
    matched_until: usize,
}

impl<'a> Scan<'a> {
    fn new(chars: &'a [char]) -> Self {
        Self { chars, spans: Vec::new(), matched_until: 0 }
    }

    fn at(&self, index: usize) -> Option<char> {
        self.chars.get(index).copied()
    }

    fn is_digit(&self, index: usize) -> bool {
        self.at(index).is_some_and(|c| c.is_ascii_digit())
    }

    /// The character `distance` places before `index`, reading the previous match as the
    /// placeholder that will replace it, so that a match right after another one is judged as
    /// it will be when the text is redacted again.
    fn before(&self, index: usize, distance: usize) -> Option<char> {
        let position = index.checked_sub(distance)?;
        if position < self.matched_until {
            Some(PLACEHOLDER_EDGE)
        } else {
            self.at(position)
        }
    }

    /// Walks the text left to right, asking `match_at` whether a match starts at each position
    /// (given the character there); a match is recorded and skipped, and a run of digits that
    /// starts none is skipped whole, so no match begins inside a longer number.
    fn matches(mut self, match_at: impl Fn(&Scan<'_>, usize, char) -> Option<usize>) -> Vec<Range<usize>> {
        let mut index = 0;
        while let Some(c) = self.at(index) {
            match match_at(&self, index, c) {
                Some(end) => {
                    self.push(index..end);
                    index = end;
                }
                None if c.is_ascii_digit() => index = self.digit_run_end(index),
                None => index += 1,
            }
        }
        self.spans
    }

    fn push(&mut self, span: Range<usize>) {
        debug_assert!(span.start >= self.matched_until && span.start < span.end && span.end <= self.chars.len());
        self.matched_until = span.end;
        self.spans.push(span);
    }

    /// The index just past the run of digits starting at `index` (`index` itself if none).
    fn digit_run_end(&self, index: usize) -> usize {
        let mut end = index;
        while self.is_digit(end) {
            end += 1;
        }
        end
    }

    /// Whether the word-character rule allows a match to start at `start`.
    fn word_start_ok(&self, start: usize) -> bool {
        !self.before(start, 1).is_some_and(is_word)
    }

    /// Whether the word-character rule allows a match to end at `end` (exclusive).
    fn word_end_ok(&self, end: usize) -> bool {
        !self.at(end).is_some_and(is_word)
    }

    /// Whether a number (card, SSN, phone) may start at `start`.
    fn numeric_start_ok(&self, start: usize) -> bool {
        let Some(previous) = self.before(start, 1) else { return true };
        if is_word(previous) || NUMERIC_PREFIXES.contains(&previous) {
            return false;
        }
        let joined_to_digit =
            CONNECTORS.contains(&previous) && self.before(start, 2).is_some_and(|c| c.is_ascii_digit());
        !joined_to_digit
    }

    /// Whether a number (card, SSN, phone) may end at `end` (exclusive).
    fn numeric_end_ok(&self, end: usize) -> bool {
        let Some(next) = self.at(end) else { return true };
        if is_word(next) {
            return false;
        }
        let after = self.at(end + 1);
        let joined_to_digit = CONNECTORS.contains(&next) && after.is_some_and(|c| c.is_ascii_digit());
        let before_double_colon = next == ':' && after == Some(':');
        !joined_to_digit && !before_double_colon
    }

    /// Digit groups from `start` separated by one kind of single separator from `separators`;
    /// stops once more than `max_digits` digits are collected (longer prefixes cannot
    /// qualify). Returns the groups and the separator used, if any.
    fn digit_groups(&self, start: usize, separators: &[char], max_digits: usize) -> (Vec<Range<usize>>, Option<char>) {
        let mut groups = Vec::new();
        let mut separator = None;
        let mut total = 0;
        let mut position = start;
        loop {
            let end = self.digit_run_end(position);
            if end == position {
                break;
            }
            total += end - position;
            groups.push(position..end);
            if total > max_digits {
                break;
            }
            let Some(next) = self.at(end) else { break };
            let same_kind = separator.is_none_or(|used| used == next);
            if !separators.contains(&next) || !same_kind || !self.is_digit(end + 1) {
                break;
            }
            separator = Some(next);
            position = end + 1;
        }
        (groups, separator)
    }

    fn digits_in(&self, groups: &[Range<usize>]) -> Vec<u8> {
        groups
            .iter()
            .flat_map(|group| self.chars.get(group.clone()).unwrap_or_default())
            .filter_map(|c| c.to_digit(10))
            .filter_map(|digit| u8::try_from(digit).ok())
            .collect()
    }
}

fn group_lengths(groups: &[Range<usize>]) -> Vec<usize> {
    groups.iter().map(|group| group.len()).collect()
}

// ---------------------------------------------------------------------------------------------
// Email

/// RFC 5321's limits on the local part and the domain.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 253;

fn is_local_part_char(c: char) -> bool {
    is_word(c) || matches!(c, '.' | '%' | '+' | '-')
}

fn is_label_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

fn find_emails(chars: &[char]) -> Vec<Range<usize>> {
    let mut scan = Scan::new(chars);
    for at_sign in 0..chars.len() {
        if scan.at(at_sign) != Some('@') || at_sign < scan.matched_until {
            continue;
        }
        let mut local_start = at_sign;
        while local_start > scan.matched_until
            && at_sign - local_start < MAX_LOCAL_PART
            && scan.at(local_start - 1).is_some_and(is_local_part_char)
        {
            local_start -= 1;
        }
        while local_start < at_sign && scan.at(local_start) == Some('.') {
            local_start += 1;
        }
        if local_start == at_sign {
            continue;
        }
        if let Some(domain_end) = email_domain_end(&scan, at_sign + 1) {
            scan.push(local_start..domain_end);
        }
    }
    scan.spans
}

/// The end of the longest domain starting at `start` whose last label is a top-level domain.
fn email_domain_end(scan: &Scan<'_>, start: usize) -> Option<usize> {
    let limit = scan.chars.len().min(start.saturating_add(MAX_DOMAIN));
    let is_label_at = |index: usize| index < limit && scan.at(index).is_some_and(is_label_char);
    let mut best = None;
    let mut labels_before = 0;
    let mut position = start;
    while is_label_at(position) {
        let label_start = position;
        // A label is runs of label characters joined by hyphens; every run end is a possible
        // end of the domain, so a dash after an address stays outside it.
        loop {
            while is_label_at(position) {
                position += 1;
            }
            if labels_before > 0 && is_top_level_domain(scan.chars.get(label_start..position).unwrap_or_default()) {
                best = Some(position);
            }
            let mut after_hyphens = position;
            while after_hyphens < limit && scan.at(after_hyphens) == Some('-') {
                after_hyphens += 1;
            }
            if after_hyphens == position || !is_label_at(after_hyphens) {
                break;
            }
            position = after_hyphens;
        }
        labels_before += 1;
        if scan.at(position) == Some('.') && is_label_at(position + 1) {
            position += 1;
        } else {
            break;
        }
    }
    best
}

fn is_top_level_domain(label: &[char]) -> bool {
    let letters = label.len() >= 2
        && label.first().is_some_and(|c| c.is_alphabetic())
        && label.iter().all(|&c| c.is_alphabetic() || is_combining_mark(c));
    let punycode = label.len() > 4
        && label.iter().take(4).map(|c| c.to_ascii_lowercase()).eq("xn--".chars())
        && label.iter().skip(4).all(|c| c.is_ascii_alphanumeric() || *c == '-');
    letters || punycode
}

// ---------------------------------------------------------------------------------------------
// Payment cards

const CARD_DIGITS: std::ops::RangeInclusive<usize> = 13..=19;

fn find_cards(chars: &[char]) -> Vec<Range<usize>> {
    Scan::new(chars).matches(|scan, index, c| {
        if c.is_ascii_digit() && scan.numeric_start_ok(index) {
            card_at(scan, index)
        } else {
            None
        }
    })
}

fn card_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    let (groups, _separator) = scan.digit_groups(start, &[' ', '-'], *CARD_DIGITS.end());
    let lengths = group_lengths(&groups);
    // Every qualifying grouping is one unbroken run or starts with a group of 4 digits.
    if !lengths.first().is_some_and(|first| *first == 4 || CARD_DIGITS.contains(first)) {
        return None;
    }
    let digits = scan.digits_in(&groups);
    (1..=groups.len()).rev().find_map(|count| {
        let lengths = lengths.get(..count)?;
        let digits = digits.get(..lengths.iter().sum::<usize>())?;
        let grouped_like_a_card = match lengths.split_first() {
            Some((_, [])) => true,
            Some((first, rest)) => *first == 4 && rest.iter().all(|length| (3..=6).contains(length)),
            None => false,
        };
        let end = groups.get(count - 1)?.end;
        let qualifies = CARD_DIGITS.contains(&digits.len())
            && grouped_like_a_card
            && digits.first() != Some(&0)
            && scan.numeric_end_ok(end)
            && passes_luhn(digits);
        qualifies.then_some(end)
    })
}

/// The Luhn checksum: doubling every second digit from the right, the digit sum is a multiple
/// of ten.
fn passes_luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| {
            let digit = u32::from(digit);
            if position % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                digit
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

// ---------------------------------------------------------------------------------------------
// Government ids

fn find_government_ids(chars: &[char]) -> Vec<Range<usize>> {
    Scan::new(chars).matches(|scan, index, c| {
        if c.is_ascii_digit() && scan.numeric_start_ok(index) {
            social_security_number_at(scan, index)
        } else if c.is_ascii_alphabetic() && scan.word_start_ok(index) {
            national_insurance_number_at(scan, index)
        } else {
            None
        }
    })
}

/// A US SSN `ddd-dd-dddd` at `start`, with the never-issued areas, groups and serials excluded.
fn social_security_number_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    const SHAPE: &str = "ddd-dd-dddd";
    let mut number = 0u32;
    for (offset, expected) in SHAPE.chars().enumerate() {
        let c = scan.at(start + offset)?;
        if expected == 'd' {
            number = number * 10 + c.to_digit(10)?;
        } else if c != expected {
            return None;
        }
    }
    let (area, group, serial) = (number / 1_000_000, number / 10_000 % 100, number % 10_000);
    let issuable = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0;
    let end = start + SHAPE.len();
    (issuable && scan.numeric_end_ok(end)).then_some(end)
}

/// A UK National Insurance number at `start`: `AB123456C`, optionally spaced `AB 12 34 56 C`.
fn national_insurance_number_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    let first = scan.at(start).filter(char::is_ascii_alphabetic)?;
    let second = scan.at(start + 1).filter(char::is_ascii_alphabetic)?;
    let mut position = start + 2;
    let mut spaced = false;
    for _pair in 0..3 {
        if scan.at(position) == Some(' ') {
            spaced = true;
            position += 1;
        }
        if !(scan.is_digit(position) && scan.is_digit(position + 1)) {
            return None;
        }
        position += 2;
    }
    if scan.at(position) == Some(' ') {
        spaced = true;
        position += 1;
    }
    let suffix = scan.at(position)?;
    position += 1;
    if !matches!(suffix.to_ascii_uppercase(), 'A'..='D') || !scan.word_end_ok(position) {
        return None;
    }
    if spaced && ![first, second, suffix].iter().all(char::is_ascii_uppercase) {
        return None;
    }
    let (first, second) = (first.to_ascii_uppercase(), second.to_ascii_uppercase());
    let valid_first = !matches!(first, 'D' | 'F' | 'I' | 'Q' | 'U' | 'V');
    let valid_second = !matches!(second, 'D' | 'F' | 'I' | 'O' | 'Q' | 'U' | 'V');
    let unallocated = matches!(
        (first, second),
        ('B', 'G') | ('G', 'B') | ('K', 'N') | ('N', 'K') | ('N', 'T') | ('T', 'N') | ('Z', 'Z')
    );
    (valid_first && valid_second && !unallocated).then_some(position)
}

// ---------------------------------------------------------------------------------------------
// IP addresses

/// The longest IPv6 text form: six groups and an embedded IPv4 address.
const MAX_IPV6_CHARS: usize = 45;

fn is_ipv6_char(c: char) -> bool {
    c.is_ascii_hexdigit() || c == ':' || c == '.'
}

fn find_ipv6(chars: &[char]) -> Vec<Range<usize>> {
    let mut scan = Scan::new(chars);
    let mut index = 0;
    while let Some(c) = scan.at(index) {
        let starts_here = (c.is_ascii_hexdigit() || c == ':')
            && !scan.before(index, 1).is_some_and(|previous| is_word(previous) || previous == ':' || previous == '.');
        if !starts_here {
            index += 1;
            continue;
        }
        let mut run_end = index;
        while scan.at(run_end).is_some_and(is_ipv6_char) {
            run_end += 1;
        }
        match ipv6_at(&scan, index, run_end) {
            Some(end) => {
                scan.push(index..end);
                index = end;
            }
            None => index = run_end,
        }
    }
    scan.spans
}

/// The end of an IPv6 address making up the run `start..run_end` of hex digits, colons and
/// dots, or all of it but one trailing `.` or `:`.
fn ipv6_at(scan: &Scan<'_>, start: usize, run_end: usize) -> Option<usize> {
    let run = scan.chars.get(start..run_end)?;
    if scan.word_end_ok(run_end) && is_ipv6(run) {
        return Some(run_end);
    }
    let (last, shorter) = run.split_last()?;
    (matches!(last, '.' | ':') && is_ipv6(shorter)).then_some(run_end - 1)
}

fn is_ipv6(text: &[char]) -> bool {
    if text.len() < 2 || text.len() > MAX_IPV6_CHARS || !text.iter().any(char::is_ascii_digit) {
        return false;
    }
    // Only ASCII hex digits, colons and dots reach here, so byte and char positions agree.
    let text: String = text.iter().collect();
    let (head, tail) = match text.find("::") {
        Some(position) => (text.get(..position).unwrap_or_default(), text.get(position + 2..)),
        None => (text.as_str(), None),
    };
    let split = |part: &str| -> Vec<String> {
        if part.is_empty() {
            Vec::new()
        } else {
            part.split(':').map(str::to_owned).collect()
        }
    };
    let parts: Vec<String> = split(head).into_iter().chain(tail.map(split).unwrap_or_default()).collect();
    // An embedded IPv4 address may only be the last thing in the text.
    let final_part = if tail == Some("") { None } else { parts.len().checked_sub(1) };
    let mut groups = 0;
    for (index, part) in parts.iter().enumerate() {
        if Some(index) == final_part && part.contains('.') {
            if !is_ipv4_text(part) {
                return false;
            }
            groups += 2;
        } else if (1..=4).contains(&part.len()) && part.chars().all(|c| c.is_ascii_hexdigit()) {
            groups += 1;
        } else {
            return false;
        }
    }
    match tail {
        Some(_) => groups <= 7,
        None => groups == 8,
    }
}

fn is_ipv4_text(text: &str) -> bool {
    let octets: Vec<&str> = text.split('.').collect();
    octets.len() == 4 && octets.iter().all(|octet| is_octet(octet.chars()))
}

/// One to three digits, value 0–255, no leading zero.
fn is_octet(digits: impl Iterator<Item = char> + Clone) -> bool {
    let length = digits.clone().count();
    if !(1..=3).contains(&length) {
        return false;
    }
    let mut value = 0u32;
    for (position, c) in digits.enumerate() {
        let Some(digit) = c.to_digit(10) else { return false };
        if position == 0 && digit == 0 && length > 1 {
            return false;
        }
        value = value * 10 + digit;
    }
    value <= 255
}

fn find_ipv4(chars: &[char]) -> Vec<Range<usize>> {
    Scan::new(chars).matches(|scan, index, c| {
        let starts_here =
            c.is_ascii_digit() && !scan.before(index, 1).is_some_and(|previous| is_word(previous) || previous == '.');
        if starts_here {
            ipv4_at(scan, index)
        } else {
            None
        }
    })
}

fn ipv4_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    let mut position = start;
    for octet in 0..4 {
        if octet > 0 {
            if scan.at(position) != Some('.') {
                return None;
            }
            position += 1;
        }
        let end = scan.digit_run_end(position);
        if end - position > 3 || !is_octet(scan.chars.get(position..end)?.iter().copied()) {
            return None;
        }
        position = end;
    }
    let next = scan.at(position);
    let after = scan.at(position + 1);
    let longer_dotted_number = next == Some('.') && after.is_some_and(|c| c.is_ascii_digit());
    let before_double_colon = next == Some(':') && after == Some(':');
    (scan.word_end_ok(position) && !longer_dotted_number && !before_double_colon).then_some(position)
}

// ---------------------------------------------------------------------------------------------
// Phones

const INTERNATIONAL_DIGITS: std::ops::RangeInclusive<usize> = 8..=15;
const NATIONAL_DIGITS: std::ops::RangeInclusive<usize> = 10..=11;

fn find_phones(chars: &[char]) -> Vec<Range<usize>> {
    Scan::new(chars).matches(|scan, index, c| {
        if c == '+' && scan.numeric_start_ok(index) {
            international_phone_at(scan, index)
        } else if (c.is_ascii_digit() || c == '(') && scan.numeric_start_ok(index) {
            national_phone_at(scan, index)
        } else {
            None
        }
    })
}

/// `+` and 8–15 digits in groups; returns the end of the longest qualifying prefix.
fn international_phone_at(scan: &Scan<'_>, plus: usize) -> Option<usize> {
    let mut position = plus + 1;
    if !scan.is_digit(position) {
        return None;
    }
    let mut digits = 0;
    let mut groups = 0;
    let mut inside_parentheses = false;
    let mut used_parentheses = false;
    let mut best = None;
    loop {
        let run_end = scan.digit_run_end(position);
        let group_length = run_end - position;
        digits += group_length;
        groups += 1;
        if digits > *INTERNATIONAL_DIGITS.end() {
            break;
        }
        let last_group_ok = groups == 1 || group_length >= 2;
        if !inside_parentheses
            && last_group_ok
            && INTERNATIONAL_DIGITS.contains(&digits)
            && scan.numeric_end_ok(run_end)
        {
            best = Some(run_end);
        }
        // The gap to the next group: an optional `)`, an optional single separator, an
        // optional `(`, and at least one of them.
        let mut gap = run_end;
        let closes = inside_parentheses && scan.at(gap) == Some(')');
        if closes {
            gap += 1;
        }
        if scan.at(gap).is_some_and(|c| matches!(c, ' ' | '-' | '.')) {
            if inside_parentheses && !closes {
                break;
            }
            gap += 1;
        }
        let opens = !used_parentheses && !inside_parentheses && scan.at(gap) == Some('(');
        if opens {
            gap += 1;
        }
        if gap == run_end || !scan.is_digit(gap) {
            break;
        }
        if closes {
            inside_parentheses = false;
        }
        if opens {
            inside_parentheses = true;
            used_parentheses = true;
        }
        position = gap;
    }
    best
}

/// A national number (10–11 digits) at `start`, a digit or `(`.
fn national_phone_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    if scan.at(start) == Some('(') {
        return parenthesised_phone_at(scan, start);
    }
    let (groups, separator) = scan.digit_groups(start, &[' ', '-', '.', '/'], *NATIONAL_DIGITS.end());
    let lengths = group_lengths(&groups);
    // Every qualifying shape starts with a group of at most 5 digits or is one unbroken run.
    if !lengths.first().is_some_and(|first| *first <= 5 || NATIONAL_DIGITS.contains(first)) {
        return None;
    }
    let digits = scan.digits_in(&groups);
    (1..=groups.len()).rev().find_map(|count| {
        let lengths = lengths.get(..count)?;
        let digits = digits.get(..lengths.iter().sum::<usize>())?;
        let end = groups.get(count - 1)?.end;
        (national_shape_ok(digits, lengths, separator) && scan.numeric_end_ok(end)).then_some(end)
    })
}

/// `(area) rest` at `start`: 2–5 digits in parentheses, an optional space, then groups of 2–8
/// digits, 10–11 digits in all.
fn parenthesised_phone_at(scan: &Scan<'_>, start: usize) -> Option<usize> {
    let area_start = start + 1;
    let area_end = scan.digit_run_end(area_start);
    let area_length = area_end - area_start;
    if !(2..=5).contains(&area_length) || scan.at(area_end) != Some(')') {
        return None;
    }
    let mut rest = area_end + 1;
    if scan.at(rest) == Some(' ') {
        rest += 1;
    }
    let (groups, _separator) = scan.digit_groups(rest, &[' ', '-', '.'], NATIONAL_DIGITS.end() - area_length);
    let lengths = group_lengths(&groups);
    (1..=groups.len()).rev().find_map(|count| {
        let lengths = lengths.get(..count)?;
        let end = groups.get(count - 1)?.end;
        let qualifies = NATIONAL_DIGITS.contains(&(area_length + lengths.iter().sum::<usize>()))
            && lengths.iter().all(|length| (2..=8).contains(length))
            && scan.numeric_end_ok(end);
        qualifies.then_some(end)
    })
}

/// Whether digit groups (`lengths`, separated by `separator`) have a national number's shape.
fn national_shape_ok(digits: &[u8], lengths: &[usize], separator: Option<char>) -> bool {
    let (Some(&first), second) = (digits.first(), digits.get(1).copied()) else { return false };
    if lengths.len() == 1 {
        return match digits.len() {
            10 => first != 1,
            11 => first == 0 || (first == 1 && second.is_some_and(|digit| digit >= 2)),
            _ => false,
        };
    }
    if !NATIONAL_DIGITS.contains(&digits.len()) {
        return false;
    }
    let north_american = separator != Some('/') && (lengths == [3, 3, 4] || (lengths == [1, 3, 3, 4] && first == 1));
    let trunk_prefixed = first == 0
        && lengths.len() <= 5
        && lengths.first().is_some_and(|length| (2..=5).contains(length))
        && lengths.iter().skip(1).all(|length| (2..=8).contains(length))
        && (separator != Some('/') || lengths.len() == 2);
    north_american || trunk_prefixed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts the redacted text, and that redacting it again changes nothing.
    #[track_caller]
    fn check(input: &str, expected: &str) {
        let redacted = redact(input);
        assert_eq!(redacted.text, expected, "redacting {input:?}");
        let again = redact(&redacted.text);
        assert_eq!(again.text, redacted.text, "redacting {input:?} twice");
        assert!(again.counts.is_empty(), "redacting {input:?} twice counted {:?}", again.counts);
    }

    /// Asserts that the input is kept exactly.
    #[track_caller]
    fn check_kept(input: &str) {
        let redacted = redact(input);
        assert_eq!(redacted.text, input);
        assert!(redacted.counts.is_empty(), "{input:?} counted {:?}", redacted.counts);
    }

    /// Asserts that the whole input is one match of `kind`.
    #[track_caller]
    fn check_whole(input: &str, kind: PiiKind) {
        let redacted = redact(input);
        assert_eq!(redacted.text, kind.placeholder(), "redacting {input:?}");
        assert_eq!(redacted.counts, BTreeMap::from([(kind, 1)]), "counting {input:?}");
    }

    fn counts(entries: &[(PiiKind, usize)]) -> BTreeMap<PiiKind, usize> {
        entries.iter().copied().collect()
    }

    /// Appends the Luhn check digit to `digits`.
    fn with_check_digit(digits: &str) -> String {
        (0..10).map(|check| format!("{digits}{check}")).find(|candidate| luhn_str(candidate)).unwrap_or_default()
    }

    fn luhn_str(digits: &str) -> bool {
        let digits: Vec<u8> = digits.bytes().map(|byte| byte - b'0').collect();
        passes_luhn(&digits)
    }

    // --- API ---

    #[test]
    fn placeholders_are_fixed() {
        assert_eq!(PiiKind::Email.placeholder(), "[email]");
        assert_eq!(PiiKind::Phone.placeholder(), "[phone]");
        assert_eq!(PiiKind::PaymentCard.placeholder(), "[card]");
        assert_eq!(PiiKind::GovernmentId.placeholder(), "[id]");
        assert_eq!(PiiKind::IpAddress.placeholder(), "[ip]");
    }

    #[test]
    fn placeholders_are_not_redacted() {
        check_kept("[email] [phone] [card] [id] [ip]");
        check_kept("[email][phone][card][id][ip]");
    }

    #[test]
    fn empty_and_plain_text_are_kept() {
        check_kept("");
        check_kept("Hello, how can I help you today?");
        check_kept("Grüße aus Köln 👋🏽 — ça va? 日本語のテキスト");
    }

    // --- Email ---

    #[test]
    fn emails_are_redacted() {
        for email in [
            "jane@example.com",
            "jane.doe+newsletter@mail.example.co.uk",
            "j_d%x-y@sub-domain.example.org",
            "JANE@EXAMPLE.COM",
            "user123@host-1.example.io",
            "josé.müller@exämple.de",
            "用户@例子.中国",
            "почта@пример.рф",
            "a@b.co",
            "x@example.xn--p1ai",
        ] {
            check_whole(email, PiiKind::Email);
        }
    }

    #[test]
    fn emails_keep_surrounding_punctuation() {
        check("Write to jane@example.com.", "Write to [email].");
        check("<jane@example.com>", "<[email]>");
        check("(jane@example.com)", "([email])");
        check("mailto:jane@example.com", "mailto:[email]");
        check("\"jane@example.com\", please", "\"[email]\", please");
        check("...jane@example.com", "...[email]");
        check("jane@example.com-thanks", "[email]-thanks");
        check("jane@example.com--thanks", "[email]--thanks");
        check("jane@example.com?", "[email]?");
    }

    #[test]
    fn email_domain_is_the_longest_valid_prefix() {
        check("a@b.com.4111", "[email].4111");
        check("jane@example.com.au", "[email]");
        check("a@mail.example.c0m", "[email].c0m");
    }

    #[test]
    fn not_emails() {
        for text in [
            "@handle",
            "ping @jane about it",
            "user@localhost",
            "a@b.c",
            "a@",
            "@",
            "@@",
            "a@@b.com",
            "a@.com",
            "a@-b.com",
            "me @ example.com",
            "email at example dot com",
        ] {
            check_kept(text);
        }
        check("a@1.2.3.4", "a@[ip]");
    }

    #[test]
    fn adjacent_emails_do_not_overlap() {
        check("a@b.com,c@d.org", "[email],[email]");
        check("a@b@c.com", "a@[email]");
        assert_eq!(redact("a@b.com c@d.org").counts, counts(&[(PiiKind::Email, 2)]));
    }

    #[test]
    fn email_with_digits_is_an_email_not_a_card() {
        check("4111111111111111@example.com", "[email]");
        check("+15551234567@sms.example.net", "[email]");
    }

    // --- Cards ---

    #[test]
    fn luhn_check() {
        assert!(luhn_str("79927398713"));
        assert!(!luhn_str("79927398710"));
        assert!(luhn_str("4111111111111111"));
        assert!(luhn_str("5500000000000004"));
        assert!(luhn_str("378282246310005"));
        assert!(!luhn_str("4111111111111112"));
        assert!(!passes_luhn(&[]));
    }

    #[test]
    fn cards_are_redacted() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5500-0000-0000-0004",
            "5500 0000 0000 0004",
            "378282246310005",
            "3782 822463 10005",
            "3782-822463-10005",
            "6011111111111117",
            "30569309025904",
            "3056 930902 5904",
            "4222222222222",
        ] {
            check_whole(card, PiiKind::PaymentCard);
        }
        let nineteen = with_check_digit("630400000000000001");
        assert_eq!(nineteen.len(), 19);
        check_whole(&nineteen, PiiKind::PaymentCard);
        let nineteen_grouped = format!(
            "{} {} {} {} {}",
            &nineteen[..4],
            &nineteen[4..8],
            &nineteen[8..12],
            &nineteen[12..16],
            &nineteen[16..]
        );
        check_whole(&nineteen_grouped, PiiKind::PaymentCard);
    }

    #[test]
    fn cards_in_sentences() {
        check("My card is 4111 1111 1111 1111, expiry 12/27.", "My card is [card], expiry 12/27.");
        check("card 4111 1111 1111 1111 12/27", "card [card] 12/27");
        check("Amex:378282246310005!", "Amex:[card]!");
        check("4111 1111 1111 1111 5500 0000 0000 0004", "[card] [card]");
        check("1234 4111 1111 1111 1111", "1234 [card]");
        // The longest leading set of groups that qualifies is the card.
        check("4111 1111 1111 1111 1111 1111", "[card] 1111 1111");
    }

    #[test]
    fn not_cards() {
        for text in [
            // Luhn failures.
            "4111 1111 1111 1112",
            "4111111111111112",
            "5500-0000-0000-0005",
            // Too short or too long.
            "411111111111",
            "41111111111111111110",
            // Mixed separators, double separators, odd groups.
            "4111 1111-1111 1111",
            "4111  1111  1111  1111",
            "4222 2222 2222 2",
            "41 11 11 11 11 11 11 11",
            // Leading zero, amounts and references.
            "0000 0000 0000 0000",
            "#4111111111111111",
            "$4111111111111111",
            "ID4111111111111111",
            "4111111111111111th",
            "1.4111111111111111",
            "4111111111111111.5",
        ] {
            check_kept(text);
        }
    }

    #[test]
    fn luhn_failing_number_may_still_be_a_phone() {
        // 13 digits with a leading `+`: never a card, an international phone number.
        check("+4411111111111", "[phone]");
        let redacted = redact("+4411111111111");
        assert_eq!(redacted.counts, counts(&[(PiiKind::Phone, 1)]));
    }

    // --- Government ids ---

    #[test]
    fn social_security_numbers_are_redacted() {
        check_whole("123-45-6789", PiiKind::GovernmentId);
        check_whole("078-05-1120", PiiKind::GovernmentId);
        check_whole("899-99-9999", PiiKind::GovernmentId);
        check("SSN: 123-45-6789.", "SSN: [id].");
    }

    #[test]
    fn invalid_or_unhyphenated_social_security_numbers_are_kept() {
        for text in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123 45 6789",
            "123456789",
            "123-45-67890",
            "1123-45-6789",
            "123-45-6789-1",
            "A123-45-6789",
        ] {
            check_kept(text);
        }
    }

    #[test]
    fn national_insurance_numbers_are_redacted() {
        for text in ["AB123456C", "AB 12 34 56 C", "AB 123456 C", "AB123456 D", "ab123456c", "JG103759A", "CE123456A"] {
            check_whole(text, PiiKind::GovernmentId);
        }
        check("My NI number is AB 12 34 56 C, thanks", "My NI number is [id], thanks");
    }

    #[test]
    fn invalid_national_insurance_numbers_are_kept() {
        for text in [
            "QQ123456C",
            "QQ 12 34 56 C",
            "DA123456A",
            "FA123456A",
            "AD123456A",
            "AO123456A",
            "BG123456A",
            "GB123456A",
            "NK123456A",
            "TN123456A",
            "ZZ123456A",
            "AB123456E",
            "AB12345C",
            "AB1234567C",
            "ab 12 34 56 c",
            "AB  12 34 56 C",
            "XAB123456C",
            "AB123456CD",
        ] {
            check_kept(text);
        }
    }

    // --- IP addresses ---

    #[test]
    fn ipv4_addresses_are_redacted() {
        for address in ["192.168.1.1", "10.0.0.1", "255.255.255.255", "0.0.0.0", "8.8.8.8"] {
            check_whole(address, PiiKind::IpAddress);
        }
        check("from 10.0.0.1:8080 today", "from [ip]:8080 today");
        check("subnet 10.0.0.0/8", "subnet [ip]/8");
        check("range 10.0.0.1-10.0.0.5", "range [ip]-[ip]");
        check("IP=203.0.113.7; next", "IP=[ip]; next");
        check("Server at 192.168.1.1.", "Server at [ip].");
    }

    #[test]
    fn not_ipv4_addresses() {
        for text in [
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "v1.2.3.4",
            "01.02.03.04",
            "192.168.001.1",
            "1.2.3.4a",
            "1234.1.1.1",
            "version 10.2.3.4.1 released",
        ] {
            check_kept(text);
        }
    }

    #[test]
    fn ipv6_addresses_are_redacted() {
        for address in [
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2001:db8:85a3::8a2e:370:7334",
            "2001:db8::1",
            "::1",
            "fe80::1",
            "2001:db8::",
            "::ffff:192.0.2.128",
            "64:ff9b::192.0.2.33",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:192.0.2.1",
        ] {
            check_whole(address, PiiKind::IpAddress);
        }
        check("link fe80::1%eth0 up", "link [ip]%eth0 up");
        check("[2001:db8::1]:443", "[[ip]]:443");
        check("prefix 2001:db8::/32.", "prefix [ip]/32.");
        check("Is it ::1?", "Is it [ip]?");
        check("It was fe80::1.", "It was [ip].");
        check("host 2001:db8::1: refused", "host [ip]: refused");
    }

    #[test]
    fn not_ipv6_addresses() {
        for text in [
            "10:30",
            "10:30:00",
            "at 10:30:00, then 11:45:30",
            "std::vec::Vec",
            "a::b",
            "dead::beef",
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            ":::1",
            "00:1A:2B:3C:4D:5E",
            "12345::1",
            "::1.2.3.4.5",
            "1.2.3.4::1",
            "fe80::1g",
        ] {
            check_kept(text);
        }
    }

    // --- Phones ---

    #[test]
    fn international_phones_are_redacted() {
        for phone in [
            "+44 20 7946 0958",
            "+44 (0) 20 7946 0958",
            "+1 (555) 123-4567",
            "+1 555 123 4567",
            "+1-555-123-4567",
            "+1.555.123.4567",
            "+49 30 1234567",
            "+33 1 23 45 67 89",
            "+4915112345678",
            "+12345678",
            "+123456789012345",
            "+1(555)1234567",
        ] {
            check_whole(phone, PiiKind::Phone);
        }
        check("tel:+15551234567", "tel:[phone]");
        check("Call +44 20 7946 0958.", "Call [phone].");
        check("Call +44 20 7946 0958 2 times", "Call [phone] 2 times");
        check("+44 20 7946 0958 (home)", "[phone] (home)");
    }

    #[test]
    fn not_international_phones() {
        for text in [
            "+1234567",
            "+1 2 3 4 5 6 7",
            "+1234567890123456",
            "++441234567890",
            "+ 44 20 7946 0958",
            "+44 ((20)) 7946",
        ] {
            check_kept(text);
        }
    }

    #[test]
    fn national_phones_are_redacted() {
        for phone in [
            "(555) 123-4567",
            "(555)123-4567",
            "(555) 123 4567",
            "(030) 1234567",
            "555-123-4567",
            "555.123.4567",
            "555 123 4567",
            "1-800-555-0199",
            "1 800 555 0199",
            "07700 900123",
            "07700-900-123",
            "030 1234567",
            "020 7946 0958",
            "01 23 45 67 89",
            "03-1234-5678",
            "090-1234-5678",
            "030/1234567",
            "5551234567",
            "15551234567",
            "07700900123",
            "0612345678",
        ] {
            check_whole(phone, PiiKind::Phone);
        }
        check("Call me on 555-123-4567, thanks.", "Call me on [phone], thanks.");
        check("Ring (555) 123-4567 ext. 12", "Ring [phone] ext. 12");
        check("5551234567 2 times", "[phone] 2 times");
    }

    #[test]
    fn not_national_phones() {
        for text in [
            "555-0199",
            "123-4567",
            "555 1234",
            "12 34 56 78 90",
            "1234567890",
            "1732406400",
            "123456789012",
            "10 20 30 40 50",
            "555-123-4567-8",
            "555-123-45678",
            "#5551234567",
            "$5551234567",
            "0 1 2 3 4 5 6 7 8 9",
            "030/123/4567",
            "(5) 123-4567",
            "3.14159265358",
            "0.1234567890",
            "1.5551234567",
            "555-123-4567x",
        ] {
            check_kept(text);
        }
    }

    // --- Precision on ordinary prose ---

    #[test]
    fn ordinary_prose_is_kept() {
        for text in [
            "I have 3 kids and 2 dogs",
            "The meeting is on 2026-11-24 at 10:30.",
            "Born 24.11.1990, moved 11/24/2026",
            "It costs $1,299.00 (or €1.299,00)",
            "Your order #12345 has shipped; order #1234567890 too",
            "Update to version 1.2.3 or 10.4.22",
            "Doors open 10:30:00 to 18:45:00",
            "Call between 9-5, room 101, floor 3",
            "Population: 8,336,817 in 2023",
            "1 000 000 people, 2019-2026",
            "Score 3:2, ratio 16:9, 100% done",
            "ISO 8601: 2026-11-24T10:30:00Z",
            "Timestamp 1732406400 in seconds",
            "Flight BA2490 at gate 23",
            "Take 2 tablets 3 times a day",
            "Answer: 42. Pi is 3.14159265358979.",
            "Request 550e8400-e29b-41d4-a716-446655440000 failed",
            "Sent 2026-11-24T10:30:00+01:00, 24/11/2026",
            "At 51.5074, -0.1278 (London)",
            "ISBN 978-3-16-148410-0, total 1,234,567,890",
            "Between 10:30-11:45 and 14:00-15:30",
            "sha256 3f2a9c0d1e5b7a8c9d0e1f2a3b4c5d6e",
        ] {
            check_kept(text);
        }
    }

    // --- Mixed text ---

    #[test]
    fn mixed_sentence_with_every_kind() {
        let input = "Hi, I'm Jane (jane.doe@example.com, +44 20 7946 0958). Card 4111 1111 1111 1111, \
                     SSN 123-45-6789, NI AB 12 34 56 C; I logged in from 192.168.1.20 and 2001:db8::7. \
                     Call (555) 123-4567 after 10:30 on 2026-11-24.";
        let expected = "Hi, I'm Jane ([email], [phone]). Card [card], \
                        SSN [id], NI [id]; I logged in from [ip] and [ip]. \
                        Call [phone] after 10:30 on 2026-11-24.";
        check(input, expected);
        assert_eq!(
            redact(input).counts,
            counts(&[
                (PiiKind::Email, 1),
                (PiiKind::Phone, 2),
                (PiiKind::PaymentCard, 1),
                (PiiKind::GovernmentId, 2),
                (PiiKind::IpAddress, 2),
            ])
        );
    }

    #[test]
    fn mixed_sentence_keeps_whitespace_and_unicode_exactly() {
        let input = "  Ça\u{301}ll 📞 555-123-4567\r\n\tmail: zoë@exämple.de 🎉\u{FE0F}\n";
        check(input, "  Ça\u{301}ll 📞 [phone]\r\n\tmail: [email] 🎉\u{FE0F}\n");
    }

    #[test]
    fn counts_add_up() {
        let input = "a@b.com c@d.com 4111111111111111 555-123-4567 10.0.0.1 ::1 123-45-6789 (555) 123-4567";
        let redacted = redact(input);
        assert_eq!(redacted.text, "[email] [email] [card] [phone] [ip] [ip] [id] [phone]");
        assert_eq!(
            redacted.counts,
            counts(&[
                (PiiKind::Email, 2),
                (PiiKind::Phone, 2),
                (PiiKind::PaymentCard, 1),
                (PiiKind::GovernmentId, 1),
                (PiiKind::IpAddress, 2),
            ])
        );
        assert!(redact("nothing here").counts.is_empty());
    }

    #[test]
    fn adjacent_matches_are_all_replaced() {
        check("555-123-4567(555) 123-4567", "[phone][phone]");
        check("10.0.0.1-4111111111111111", "[ip]-[card]");
        check("4111111111111111+15551234567", "[card][phone]");
        check("AB123456C.4111111111111111", "[id].[card]");
        check("a@b.com-4111111111111111", "[email]-[card]");
        check("fe80::a:4111111111111111", "[ip]:[card]");
        check("5551234567::1", "5551234567::1");
        check("10.0.0.1::1", "10.0.0.1::1");
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for input in [
            "Hi, I'm jane@example.com, card 4111 1111 1111 1111, phone +1 (555) 123-4567.",
            "10.0.0.1-4111111111111111-10.0.0.2-5500000000000004",
            "[card]+15551234567 [ip]::1 [phone](555) 123-4567",
            "a@b.com.4111111111111111 and x@y.org-AB123456C",
        ] {
            let once = redact(input);
            let twice = redact(&once.text);
            assert_eq!(twice.text, once.text, "{input:?}");
            assert!(twice.counts.is_empty(), "{input:?}: {:?}", twice.counts);
        }
    }

    // --- Robustness ---

    /// A small xorshift generator, so the fuzz inputs are the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % bound as u64).unwrap_or(0)
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const FRAGMENTS: &[&str] = &[
        "0",
        "1",
        "4",
        "5",
        "9",
        "00",
        "12",
        "255",
        "256",
        "666",
        "4111",
        "1111",
        "0004",
        "5500",
        "1234567",
        " ",
        "  ",
        "-",
        ".",
        ",",
        ":",
        "::",
        "/",
        "+",
        "(",
        ")",
        "#",
        "$",
        "@",
        "%",
        "_",
        "a",
        "Z",
        "AB",
        "C",
        "e",
        "f",
        "x",
        "é",
        "e\u{301}",
        "\u{301}",
        "😀",
        "👨\u{200D}👩",
        "1\u{FE0F}\u{20E3}",
        "中",
        "٣",
        "\n",
        "\r\n",
        "\t",
        "\u{0}",
        "\u{FEFF}",
        "\u{E000}",
        "[",
        "]",
        "[ip]",
        "[card]",
        "jane@example.com",
        "a@b.co",
        "4111 1111 1111 1111",
        "5500-0000-0000-0004",
        "378282246310005",
        "123-45-6789",
        "AB123456C",
        "AB 12 34 56 C",
        "192.168.1.1",
        "10.0.0.1",
        "2001:db8::1",
        "::1",
        "fe80::",
        "+44 20 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "07700 900123",
        "5551234567",
        "2026-11-24",
        "10:30",
        "1.2.3",
        "$1,299.00",
        "#12345",
    ];

    fn random_text(rng: &mut XorShift, pieces: usize) -> String {
        (0..pieces).map(|_| rng.pick(FRAGMENTS)).collect()
    }

    #[test]
    fn random_inputs_never_panic_and_redaction_is_idempotent() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..4_000 {
            let pieces = 1 + rng.below(40);
            let input = random_text(&mut rng, pieces);
            let (once, _rounds, settled) = redact_counting_rounds(&input);
            assert!(settled, "{input:?} did not settle");
            let twice = redact(&once.text);
            assert_eq!(twice.text, once.text, "redacting {input:?} twice");
            assert!(twice.counts.is_empty(), "redacting {input:?} twice counted {:?}", twice.counts);
        }
    }

    #[test]
    fn counts_match_placeholders_in_output() {
        let mut rng = XorShift(42);
        let without_brackets: Vec<&str> =
            FRAGMENTS.iter().copied().filter(|fragment| !fragment.contains('[') && !fragment.contains(']')).collect();
        for _ in 0..2_000 {
            let pieces = 1 + rng.below(30);
            let input: String = (0..pieces).map(|_| rng.pick(&without_brackets)).collect();
            let redacted = redact(&input);
            for kind in
                [PiiKind::Email, PiiKind::Phone, PiiKind::PaymentCard, PiiKind::GovernmentId, PiiKind::IpAddress]
            {
                let in_output = redacted.text.matches(kind.placeholder()).count();
                let counted = redacted.counts.get(&kind).copied().unwrap_or(0);
                assert_eq!(in_output, counted, "{kind:?} in {input:?} -> {:?}", redacted.text);
            }
        }
    }

    #[test]
    fn random_chars_never_panic() {
        let mut rng = XorShift(7);
        for _ in 0..2_000 {
            let length = rng.below(64);
            let input: String = (0..length)
                .map(|_| {
                    let code = match rng.below(4) {
                        0 => 0x20 + rng.below(0x5F),
                        1 => 0x30 + rng.below(10),
                        2 => rng.below(0x3_0000),
                        _ => 0x300 + rng.below(0x70),
                    };
                    u32::try_from(code).ok().and_then(char::from_u32).unwrap_or('?')
                })
                .collect();
            let once = redact(&input);
            assert_eq!(redact(&once.text).text, once.text, "{input:?}");
        }
    }

    #[test]
    fn large_inputs_are_handled() {
        let digits = "7".repeat(100_000);
        check_kept(&digits);
        let spaced_digits = "1 ".repeat(50_000);
        check_kept(&spaced_digits);
        let grouped = "1111 ".repeat(20_000);
        check_kept(&grouped);
        let dotted = "1.".repeat(50_000);
        check_kept(&dotted);
        let colons = ":".repeat(100_000);
        check_kept(&colons);
        let hex = "a:".repeat(50_000);
        check_kept(&hex);
        let at_signs = "a@".repeat(50_000);
        check_kept(&at_signs);
        let pluses = "+1".repeat(50_000);
        check_kept(&pluses);
        let long_local = format!("{}@example.com", "x".repeat(100_000));
        let redacted = redact(&long_local);
        assert_eq!(redacted.counts, counts(&[(PiiKind::Email, 1)]));
        assert!(redacted.text.ends_with("[email]"));

        let cards = "4111 1111 1111 1111 ".repeat(5_000);
        let redacted = redact(&cards);
        assert_eq!(redacted.counts, counts(&[(PiiKind::PaymentCard, 5_000)]));
        assert_eq!(redacted.text, "[card] ".repeat(5_000));

        let chained_phones = "(555) 123-4567".repeat(7_000);
        let redacted = redact(&chained_phones);
        assert_eq!(redacted.counts, counts(&[(PiiKind::Phone, 7_000)]));

        let mut rng = XorShift(0xDEAD_BEEF);
        let mixed = random_text(&mut rng, 40_000);
        assert!(mixed.len() > 100_000);
        let (once, _rounds, settled) = redact_counting_rounds(&mixed);
        assert!(settled);
        assert_eq!(redact(&once.text).text, once.text);
    }
}
