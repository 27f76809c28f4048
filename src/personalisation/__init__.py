"""Client-side personalisation rules (they run on a site, inside a learner's begin_round or end_round)."""
