"""Benchmarks that join both stages: which pooling and head win (leaderboard), how fast embedding is (speed,
scaling), and the SentEval-style transfer table (senteval).
"""
