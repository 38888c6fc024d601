"""Client configuration from what a load put where: the files that make containerd, k3s/RKE2,
Podman/CRI-O, OpenShift and Docker pull `docker.io/library/redis:7` from the mirror.

A pure function (`render.render`) from the mappings (per image: the source reference as
clients name it, and the target registry and repository it landed in) and the target's access
(scheme, TLS verification, CA file) to file contents, plus what each client cannot express,
with the reason; `render.write` puts them under a directory. model: the mappings, the access,
what is left out, the files; shared: the views of the mappings the formats share; one module
per format, each as its project documents it (containerd, k3s, containers, openshift, docker),
and readme (README.txt, for people).
"""
