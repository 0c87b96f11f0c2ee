# Defaults for every host. This file is the only home of defaults: override any key in
# group_data/<group>.py, in the inventory (per host) or with `--data key=value`.
#
# Keep this file to plain values (pyinfra turns every module-level name into host data).
# Worker-plan keys use matrix-docker-ansible-deploy's names so existing variables carry over.
# Every other key is prefixed `matrix_synapse_`; an unknown `matrix_synapse_*` key stops the run.

# ---------------------------------------------------------------------------------------------
# Homeserver identity
# ---------------------------------------------------------------------------------------------

# The homeserver name (the part after ':' in user IDs). Required; there is no sensible default.
matrix_domain = None

# Public base URL clients use; None lets Synapse derive https://<matrix_domain>/.
matrix_synapse_public_baseurl = None

# Send anonymous usage statistics to matrix.org.
matrix_synapse_report_stats = False

# Let anyone register an account (registration_shared_secret always works for admins).
matrix_synapse_enable_registration = False

# Servers trusted to vouch for other servers' signing keys (Synapse's default is matrix.org; set
# explicitly so Synapse does not warn at every start). [] trusts nobody but the origin servers.
matrix_synapse_trusted_key_servers = [{"server_name": "matrix.org"}]

# Root log level for main and every worker (logs go to the journal).
matrix_synapse_log_level = "INFO"

# Extra top-level homeserver.yaml settings passed through verbatim,
# e.g. {"max_upload_size": "100M"}.
# Keys that this deploy manages itself (listeners, database, instance_map, ...) are refused, and so
# are the secrets it generates on the host (macaroon_secret_key, form_secret,
# registration_shared_secret, worker_replication_secret): their values are never printed.
matrix_synapse_configuration_extension = {}

# ---------------------------------------------------------------------------------------------
# Installation and paths
# ---------------------------------------------------------------------------------------------

# Install the Debian packages (Python, Redis, nginx, build deps) and the pinned Synapse into the
# virtualenv. Set False if you provide <venv>/bin/python and the services yourself.
matrix_synapse_install_enabled = True

# Synapse version installed from PyPI into the virtualenv; changing it upgrades Synapse and
# restarts every process.
matrix_synapse_version = "1.163.2"

# Virtualenv the units run `<venv>/bin/python -m synapse.app...` from.
matrix_synapse_venv_path = "/opt/venvs/matrix-synapse"

# System user and group Synapse runs as; they own its data and can read its config.
# Never root (root, toor, or the groups root and wheel are refused).
matrix_synapse_user = "matrix-synapse"
matrix_synapse_group = "matrix-synapse"

# Configuration directory: homeserver.yaml, conf.d/, workers/, secrets/.
matrix_synapse_config_dir = "/etc/matrix-synapse"

# State directory (working directory of every process) and media store.
matrix_synapse_data_dir = "/var/lib/matrix-synapse"
matrix_synapse_media_store_path = "/var/lib/matrix-synapse/media_store"

# Where unit files and drop-ins are written.
matrix_synapse_systemd_dir = "/etc/systemd/system"

# Seconds a deploy waits for another deploy of the same host (host lock) before failing.
matrix_synapse_deploy_lock_timeout = 600

# ---------------------------------------------------------------------------------------------
# Main process listeners (bind to loopback unless you put Synapse behind a proxy elsewhere)
# ---------------------------------------------------------------------------------------------

# Client and federation HTTP listener of the main process.
matrix_synapse_http_port = 8008

# Replication listener of the main process (only when workers are enabled); never make it public.
matrix_synapse_replication_http_port = 9093

# Prometheus metrics: a `metrics` listener on every process (main on this port, each worker on
# its type's metrics block, below), on the metrics bind addresses (loopback). On by default,
# unlike matrix-docker-ansible-deploy (off unless its Prometheus is on): a loopback listener
# costs a thread per process, and a 100-worker homeserver is not run blind.
matrix_synapse_metrics_enabled = True
matrix_synapse_metrics_port = 9100

# Addresses the client/federation, replication and metrics listeners of every process bind to.
# In a cluster of several machines each also binds its machine's matrix_synapse_private_address.
matrix_synapse_bind_addresses = ["127.0.0.1"]
matrix_synapse_replication_bind_addresses = ["127.0.0.1"]
matrix_synapse_metrics_bind_addresses = ["127.0.0.1"]

# Trust X-Forwarded-For from the reverse proxy in front of the HTTP listeners.
matrix_synapse_x_forwarded = True

# Before restarting anything, load every changed Synapse config with the installed Synapse (one
# process for all of them); if Synapse refuses one, put the previous files back and fail the run.
matrix_synapse_config_check = True

# Seconds a deploy waits, after (re)starting processes, for each to be ready (systemd READY=1,
# /health on HTTP listeners, and every process subscribed to Redis) before failing the run.
matrix_synapse_readiness_timeout = 300

# ---------------------------------------------------------------------------------------------
# Restarts: how a change reaches the running processes
# ---------------------------------------------------------------------------------------------

# "rolling": a change that concerns main restarts main first, alone, and waits until it is ready
# (an upgrade migrates the schema there); then every other process restarts per class in waves,
# never a whole class at once, each wave ready before the next (Synapse's coupled groups restart
# together: all processes when event persisters change, every federation sender stopped then
# started when federation_sender_instances change, main with every pusher when pusher_instances
# change). "all-at-once": every affected process in one wave (faster, but a full outage).
matrix_synapse_restart_strategy = "rolling"
# Percentage of a class's processes (e.g. the generic workers) restarted per wave, 1 to 50:
# rounded down, at least 1, and always fewer than the whole class when it has two or more.
matrix_synapse_restart_batch_percent = 20
# At most this many seconds between nginx no longer sending new requests to a process and the
# process stopping; the wait ends as soon as none of its requests is in flight, so it costs time
# only while requests are. 30: a client's long-poll /sync waits 30 s, and a send can wait that
# long for a restarting stream writer; a shorter grace cuts them, and nginx's retry may meet
# a configuration in which the class's other server is still drained (a 503). A process with no
# other server in its class (a stream writer, media) is not drained: it serves until it stops.
matrix_synapse_restart_drain_seconds = 30

# ---------------------------------------------------------------------------------------------
# nginx worker routing (one server in front of main and every worker)
# ---------------------------------------------------------------------------------------------

# Render and reload the nginx routing config (checked with `nginx -t` first; never restarted).
matrix_synapse_nginx_enabled = True
matrix_synapse_nginx_config_path = "/etc/nginx/conf.d/matrix-synapse-workers.conf"
# Addresses nginx's Synapse server listens on (plain HTTP; terminate TLS in front of it).
matrix_synapse_nginx_listen_addresses = ["127.0.0.1"]
# Its port; must differ from every Synapse listener on those addresses.
matrix_synapse_nginx_listen_port = 8088
# server_name values, e.g. ["matrix.example.org"]; [] answers any Host.
matrix_synapse_nginx_server_names = []
# IPs/CIDRs of proxies in front of nginx whose X-Forwarded-For/-Proto it believes (realip).
matrix_synapse_nginx_trusted_proxies = []
# Largest request body (media uploads); keep it >= Synapse's max_upload_size.
matrix_synapse_nginx_client_max_body_size = "50M"
# Access log with the serving upstream and address (no query strings); None disables it.
matrix_synapse_nginx_access_log = "/var/log/nginx/matrix-synapse-workers.access.log"

# ---------------------------------------------------------------------------------------------
# Public TLS (nginx's HTTPS servers in front of the same routing as the plain server)
# ---------------------------------------------------------------------------------------------

# "off": only the plain server above. "acme": certbot obtains and renews the certificate over
# HTTP-01 through nginx's port-80 server (certbot's own timer renews; its deploy hook reloads
# nginx, never restarts it or Synapse). "files": serve the certificate and key you provide.
matrix_synapse_tls_mode = "off"
# Names on the certificate and the servers' server_name; [] uses the host of
# matrix_synapse_public_baseurl, else matrix_domain.
matrix_synapse_tls_server_names = []
# Addresses the public servers (80, 443 and 8448) listen on.
matrix_synapse_tls_listen_addresses = ["0.0.0.0"]
# Client and federation traffic over TLS.
matrix_synapse_tls_https_port = 443
# Plain HTTP: answers ACME challenges and redirects everything else to HTTPS.
matrix_synapse_tls_http_port = 80
# Federation's own TLS port (what other servers use without delegation); None: none.
matrix_synapse_tls_federation_port = 8448
# The certificate (full chain) and key nginx serves. "files": yours, readable by root; "acme":
# where the deploy keeps certbot's current certificate (0640 and 0600, copied on each renewal).
matrix_synapse_tls_certificate_path = "/etc/nginx/matrix-synapse-tls/fullchain.pem"
matrix_synapse_tls_key_path = "/etc/nginx/matrix-synapse-tls/privkey.pem"
# The ACME directory; a private ACME server works (see matrix_synapse_tls_acme_ca_bundle).
matrix_synapse_tls_acme_directory_url = "https://acme-v02.api.letsencrypt.org/directory"
# The ACME account's contact; None registers without one.
matrix_synapse_tls_acme_email = None
# CA bundle certbot trusts for the ACME directory (a private ACME server), for the deploy's
# certbot run and, through a certbot.service drop-in, its timer's renewals; None: the system's.
matrix_synapse_tls_acme_ca_bundle = None
# Where certbot writes HTTP-01 tokens and nginx serves them from.
matrix_synapse_tls_acme_webroot = "/var/lib/matrix-synapse-acme"
# Serve Synapse's admin API (/_synapse/admin) and main's metrics on the public servers; off,
# they answer 404 there (still reachable on the loopback server and the metrics listeners).
matrix_synapse_tls_expose_admin_api = False
matrix_synapse_tls_expose_metrics = False
# Delegation: with TLS on and matrix_domain not the name served (e.g. example.org served by
# matrix.example.org), the public servers answer /.well-known/matrix/server and /client (as
# matrix-docker-ansible-deploy's static files do); serve them at https://<matrix_domain>/ too.
matrix_synapse_well_known_enabled = True
# m.server; None: the first served name and matrix_synapse_tls_https_port, e.g.
# "matrix.example.org:443" (matrix_static_files_file_matrix_server_property_m_server in MDAD).
matrix_synapse_well_known_server = None
# m.homeserver.base_url; None: matrix_synapse_public_baseurl, else https:// and the first name.
matrix_synapse_well_known_client_base_url = None

# ---------------------------------------------------------------------------------------------
# Prometheus service discovery (needs matrix_synapse_metrics_enabled)
# ---------------------------------------------------------------------------------------------

# A Prometheus file_sd JSON listing every process's metrics endpoint with the labels Synapse's
# Grafana dashboard filters by (job, index, instance), rewritten in the same run when workers
# come or go; a change to it restarts nothing. Point a file_sd_configs scrape job at it (README,
# "Metrics"). None writes no file. The directory is created if missing and may be Prometheus's.
matrix_synapse_metrics_file_sd_path = "/etc/prometheus/file_sd/synapse.json"

# ---------------------------------------------------------------------------------------------
# PostgreSQL (workers need PostgreSQL; SQLite is not offered)
# ---------------------------------------------------------------------------------------------

matrix_synapse_database_host = "127.0.0.1"
matrix_synapse_database_port = 5432
matrix_synapse_database_name = "synapse"
matrix_synapse_database_user = "synapse"

# Install PostgreSQL on this host, create the role and the database (C collation, as Synapse
# requires) and size max_connections (see spare_workers below). False: use an existing server.
matrix_synapse_database_install_postgresql = False

# With install_postgresql: max_connections leaves room for this many workers beyond the plan
# (rounded up to a multiple of 100), so scaling up by that many never restarts PostgreSQL. The
# deploy raises max_connections (a PostgreSQL restart; the preview says so and why) only when
# the workers running during a run would not fit, or while no Synapse process runs; it never
# lowers it (to lower it: ALTER SYSTEM SET max_connections, then restart PostgreSQL yourself).
matrix_synapse_database_spare_workers = 32

# Password of the database user, or None for passwordless (peer/trust) authentication.
# It is written to a 0600 pgpass file, never into a YAML file. Load it from a secret store or an
# environment variable in your own group_data, never commit it.
matrix_synapse_database_password = None

# Connection pool per process. Small pools let 130+ workers fit PostgreSQL's max_connections:
# total = main_cp_max + workers * workers_cp_max (+ one per process, opened at start).
matrix_synapse_database_cp_min = 1
matrix_synapse_database_main_cp_max = 10
matrix_synapse_database_workers_cp_max = 3

# ---------------------------------------------------------------------------------------------
# Redis (the replication bus; always enabled)
# ---------------------------------------------------------------------------------------------

matrix_synapse_redis_host = "127.0.0.1"
matrix_synapse_redis_port = 6379
# A unix socket path instead of host/port, e.g. "/run/redis/redis-server.sock".
matrix_synapse_redis_path = None
matrix_synapse_redis_dbid = 0
# The password every Synapse process gives Redis (written to a 0600 file, never printed). With
# several machines it is required and the main host's Redis requires it (requirepass) and listens
# on the main host's private address too; None on one machine: no password.
matrix_synapse_redis_password = None

# ---------------------------------------------------------------------------------------------
# systemd resource limits
# ---------------------------------------------------------------------------------------------

# Limits for the main process, as systemd [Service] directives, e.g. {"MemoryMax": "4G"}.
matrix_synapse_systemd_resource_limits = {}

# Limits per worker type (keys: room, sync, client_reader, federation_reader, generic,
# stream_writer, federation_sender, pusher, appservice, user_dir, media_repository,
# background), e.g. {"generic": {"MemoryMax": "1G", "CPUQuota": "50%"}}. Each configured type
# gets a drop-in per worker.
matrix_synapse_workers_systemd_resource_limits = {}

# ---------------------------------------------------------------------------------------------
# Workers (matrix-docker-ansible-deploy's names)
# ---------------------------------------------------------------------------------------------

matrix_synapse_workers_enabled = False

# One of: little-federation-helper (1 worker), one-of-each (16), specialized-workers (19).
matrix_synapse_workers_preset = "one-of-each"

# Worker counts. None takes the preset's count; a number overrides it.
# Maximum: at most 1,000 workers of one type (each type's ports are one 1,000-wide block, below;
# the stream writers of all streams share one block, so at most 1,000 of them together), and
# at most 1,024 workers per machine in all (1,000 of one type on top of a preset's others; the
# deploy is tested at 1,000 and each Synapse process needs ~120 MiB). Larger counts stop the run
# at once, naming the key.
matrix_synapse_workers_room_workers_count = None
matrix_synapse_workers_sync_workers_count = None
matrix_synapse_workers_client_reader_workers_count = None
matrix_synapse_workers_federation_reader_workers_count = None
matrix_synapse_workers_generic_workers_count = None
matrix_synapse_workers_federation_sender_workers_count = None
matrix_synapse_workers_pusher_workers_count = None
matrix_synapse_workers_appservice_workers_count = None  # at most 1
matrix_synapse_workers_user_dir_workers_count = None  # at most 1
matrix_synapse_workers_background_workers_count = None  # at most 1
matrix_synapse_workers_media_repository_workers_count = None

# Stream writers per stream. typing, to_device, account_data, presence and push_rules take at
# most 1 (Synapse's rule); the others may be sharded.
matrix_synapse_workers_stream_writer_events_stream_workers_count = None
matrix_synapse_workers_stream_writer_typing_stream_workers_count = None
matrix_synapse_workers_stream_writer_to_device_stream_workers_count = None
matrix_synapse_workers_stream_writer_account_data_stream_workers_count = None
matrix_synapse_workers_stream_writer_receipts_stream_workers_count = None
matrix_synapse_workers_stream_writer_presence_stream_workers_count = None
matrix_synapse_workers_stream_writer_push_rules_stream_workers_count = None
matrix_synapse_workers_stream_writer_device_lists_stream_workers_count = None
matrix_synapse_workers_stream_writer_thread_subscriptions_stream_workers_count = None
matrix_synapse_workers_stream_writer_quarantined_media_changes_stream_workers_count = None

# First port of each type's block; worker N of a type gets start + N. The defaults are
# 1,000-wide blocks below 32768 that never collide (matrix-docker-ansible-deploy's collide after
# 89 generic workers). Any collision between two listeners stops the run before a host is touched.
# On several machines N counts across the cluster (see matrix_synapse_role) and the port is
# start + N % 1000: one machine's workers of a type are consecutive, so they still never collide.
matrix_synapse_workers_room_workers_port_range_start = 11000
matrix_synapse_workers_room_workers_metrics_range_start = 21000
matrix_synapse_workers_sync_workers_port_range_start = 12000
matrix_synapse_workers_sync_workers_metrics_range_start = 22000
matrix_synapse_workers_client_reader_workers_port_range_start = 13000
matrix_synapse_workers_client_reader_workers_metrics_range_start = 23000
matrix_synapse_workers_federation_reader_workers_port_range_start = 14000
matrix_synapse_workers_federation_reader_workers_metrics_range_start = 24000
matrix_synapse_workers_generic_workers_port_range_start = 15000
matrix_synapse_workers_generic_workers_metrics_range_start = 25000
matrix_synapse_workers_stream_writer_workers_http_port_range_start = 16000
matrix_synapse_workers_stream_writer_workers_replication_port_range_start = 19000
matrix_synapse_workers_stream_writer_workers_metrics_range_start = 26000
matrix_synapse_workers_user_dir_workers_port_range_start = 17000
matrix_synapse_workers_user_dir_workers_metrics_range_start = 27000
matrix_synapse_workers_media_repository_workers_port_range_start = 18000
matrix_synapse_workers_media_repository_workers_metrics_range_start = 28000
matrix_synapse_workers_federation_sender_workers_metrics_range_start = 29000
matrix_synapse_workers_pusher_workers_metrics_range_start = 30000
matrix_synapse_workers_appservice_workers_metrics_range_start = 31000
matrix_synapse_workers_background_workers_metrics_range_start = 31100

# A hand-written worker list replaces the preset and every count above (the same maximum and
# rules apply). Entries use matrix-docker-ansible-deploy's fields: name and type are required;
# port (HTTP), replication_port and stream_writer_stream are required where the type needs them;
# metrics_port when metrics are enabled; id, app and webserving are accepted. Example:
#   [{"name": "generic-0", "type": "generic_worker", "port": 15000, "metrics_port": 25000},
#    {"name": "stream-writer-0-events", "type": "stream_writer", "stream_writer_stream": "events",
#     "replication_port": 19000, "metrics_port": 26000}]
matrix_synapse_workers_enabled_list = []

# ---------------------------------------------------------------------------------------------
# Several machines (one cluster: every inventory host with the same matrix_domain)
# ---------------------------------------------------------------------------------------------

# "main": this machine runs the main process and nginx (and Redis/PostgreSQL unless external);
# exactly one host of the cluster is main. "workers": only the workers its own worker keys plan
# (counts, preset or enabled_list; count-based names are numbered across the cluster, main's
# first, then the others in inventory order, so names are unique). "retired": everything of ours
# is stopped and removed from it, so a machine can leave the cluster.
matrix_synapse_role = "main"

# The IP address or host name the cluster's other machines reach this one at (replication,
# Redis, PostgreSQL, nginx upstreams). Required once the cluster has more than one machine; an IP
# address is then bound by every replication and worker HTTP listener (a host name: bind its IP
# yourself through matrix_synapse_bind_addresses / matrix_synapse_replication_bind_addresses).
# Never loopback; nothing binds a public address unless you put it here.
matrix_synapse_private_address = None

# Media repository workers on more than one machine need one media store shared by all of them
# (Synapse's rule): set True only when matrix_synapse_media_store_path is such shared storage.
matrix_synapse_media_store_shared = False

# The secret every process of the cluster signs replication requests with (Synapse's
# worker_replication_secret, in a 0600 file, never printed). Required, and the same on every
# host, once the cluster has more than one machine (its replication listeners are reachable
# from the network): generate it once, e.g. python3 -c 'import secrets;
# print(secrets.token_urlsafe(32))', and keep it in your group_data with the other secrets.
# None: each machine generates its own on first deploy (enough for one machine).
matrix_synapse_worker_replication_secret = None
# The homeserver's signing key, macaroon and form secrets: with several machines required, the
# same on every host, because every process signs and checks with them (a worker signs the
# events it creates and the federation requests it sends). Give the main host's own (the one
# line of /etc/matrix-synapse/secrets/signing.key, and secrets/macaroon, secrets/form) so the
# homeserver keeps its identity; written 0600 on each machine, never printed. None: generated
# once on the machine.
matrix_synapse_signing_key = None
matrix_synapse_macaroon_secret_key = None
matrix_synapse_form_secret = None
