"""The troubleshooting procedure of ALM-45641, automated: steps with evidence, safe fixes (SPEC §7)."""
