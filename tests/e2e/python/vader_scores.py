"""Prints the reference VADER package's scores for sentences read as a JSON list from standard
input: one JSON list of {"neg", "neu", "pos", "compound"} objects on standard output."""

import json
import sys

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


def main():
    sentences = json.load(sys.stdin)
    analyzer = SentimentIntensityAnalyzer()
    json.dump([analyzer.polarity_scores(sentence) for sentence in sentences], sys.stdout)


if __name__ == "__main__":
    main()
