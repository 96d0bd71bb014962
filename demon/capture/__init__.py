"""The capture host's side: ``demon-capture`` files mirrored frames into one pcap
per tap (told apart by VLAN tag or by the tap's match) with a manifest beside each.

Standard library only, so it runs anywhere the capture host has Python.
"""
