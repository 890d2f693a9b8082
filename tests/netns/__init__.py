"""The network-namespace fault suite: two hosts on one machine, real faults (issue 6)."""
