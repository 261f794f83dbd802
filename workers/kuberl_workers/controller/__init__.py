"""The single controller: owns the data (leases, C3PO++ pools, rewards) and the control flow of one RL job."""
