"""The daemon process and the admin's tools: the daemon and its supervised children, the nginx
front, doctor, backup and retention.

May import: anything under mlpd/ (it is the outermost core layer). Not web/ or workers/ (it starts
them as processes by name).
"""
