"""Campaigns: what to collect when (stream policies, triggers and their condition language)."""
