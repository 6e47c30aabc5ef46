#!/usr/bin/env bash
# Shards the index's image table of one database over MariaDB servers with
# the Spider engine, one backend per class: the head keeps every other table
# (collections, aliases, image_blobs, jobs, duplicates, migrations) and the
# index keeps talking to the head alone. docs/OPERATIONS.md, "Sharding the
# image table", describes the layout; the `cbir-index` tests
# `<storage test>::spider` and `spider::` run this script as it is.
#
# usage: deploy/spider/shard-images.sh HEAD DATABASE BACKEND BACKEND...
#   HEAD, BACKEND  host:port of the Spider head and of each backend
#   DATABASE       the index's database on the head (INDEX_DATABASE_URL),
#                  migrated: start the index on it once, then stop it
#
# Class c goes to backend number c mod N (partition `b<i>` of the head's
# table, server `<DATABASE>_b<i>`), so one class lives on one backend. Stop
# the index services while this runs: the rows the head holds are moved
# into the backends in one transaction. Running it again on a sharded
# database changes nothing.
#
# Environment: CBIR_SPIDER_USER, CBIR_SPIDER_PASSWORD (the account this
# script uses on every server; default root, no password);
# CBIR_SPIDER_LINK_USER, CBIR_SPIDER_LINK_PASSWORD (the account the head's
# Spider uses on the backends, stored in mysql.servers; default the same).
set -euo pipefail

die() { echo "shard-images: $*" >&2; exit 1; }
[[ $# -ge 3 ]] || die "usage: $0 HEAD DATABASE BACKEND BACKEND..."
head="$1" db="$2"
shift 2
backends=("$@")
[[ $db =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$db': letters, digits and _ only"
user="${CBIR_SPIDER_USER:-root}"
link_user="${CBIR_SPIDER_LINK_USER:-$user}"
link_password="${CBIR_SPIDER_LINK_PASSWORD:-${CBIR_SPIDER_PASSWORD:-}}"
[[ -n ${CBIR_SPIDER_PASSWORD:-} ]] && export MYSQL_PWD="$CBIR_SPIDER_PASSWORD"
client="$(command -v mariadb || command -v mysql)" || die "no mariadb client"
dump="$(command -v mariadb-dump || command -v mysqldump)" || die "no mariadb-dump"

# sql HOST:PORT [client args...]: one batch session, answers without headers.
sql() {
  local at="$1"
  shift
  "$client" --protocol=TCP -h "${at%:*}" -P "${at##*:}" -u "$user" --batch --skip-column-names "$@"
}
quote() { local s="${1//\\/\\\\}"; printf "'%s'" "${s//\'/\'\'}"; }

spider="$(sql "$head" -e "SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'SPIDER'")"
[[ $spider == YES || $spider == DEFAULT ]] || die "the Spider engine is not loaded on $head: \
install mariadb-plugin-spider (the server's version) and run INSTALL SONAME 'ha_spider' there"
table_engine() {
  sql "$head" -e "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$db' AND TABLE_NAME = '$1'"
}
engine="$(table_engine images)"
[[ -n $engine ]] || die "$db has no images table on $head: start the index on it once (it creates the schema)"
if [[ ${engine^^} == SPIDER ]]; then
  echo "shard-images: $db.images is already a Spider table, nothing to do"
  exit 0
fi
[[ -z "$(table_engine images_unsharded)" ]] || die "$db.images_unsharded exists on $head: \
a previous run stopped half way; see docs/OPERATIONS.md"

# 1. Each backend gets the head's table as it is (columns, keys, its own
#    hash partitions by class), empty.
ddl="$("$dump" --protocol=TCP -h "${head%:*}" -P "${head##*:}" -u "$user" \
  --no-data --skip-comments --skip-add-drop-table --skip-triggers --compact "$db" images)"
servers="" partitions=""
for i in "${!backends[@]}"; do
  b="${backends[$i]}"
  sql "$b" -e "CREATE DATABASE IF NOT EXISTS \`$db\`"
  if [[ -n "$(sql "$b" -e "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = '$db' AND TABLE_NAME = 'images'")" ]]; then
    rows="$(sql "$b" "$db" -e "SELECT COUNT(*) FROM images")"
    [[ $rows == 0 ]] || die "backend $b already holds $rows rows in $db.images"
    sql "$b" "$db" -e "DROP TABLE images"
  fi
  printf '%s\n' "$ddl" | sql "$b" "$db"
  name="${db}_b$i"
  servers+="CREATE OR REPLACE SERVER \`$name\` FOREIGN DATA WRAPPER mysql OPTIONS (HOST $(quote "${b%:*}"), PORT ${b##*:}, USER $(quote "$link_user"), PASSWORD $(quote "$link_password"), DATABASE '$db');"$'\n'
  partitions+="${partitions:+, }PARTITION b$i COMMENT = 'srv \"$name\"'"
done

# 2. On the head: the servers, a Spider table of the same definition whose
#    partition b<i> is backend i's table, and the rows moved into it.
#    The head numbers new images itself (auto_increment_mode 1): the
#    default mode locks the newest row of every backend a transaction writes
#    to until it commits, and concurrent writers then wait on each other
#    across servers, where no deadlock detector sees them.
#    (ALTER TABLE ... ENGINE=SPIDER on a table with rows does not move them:
#    hence the empty copy, then INSERT ... SELECT.)
sql "$head" "$db" <<SQL
$servers
RENAME TABLE images TO images_unsharded;
CREATE TABLE images LIKE images_unsharded;
ALTER TABLE images ENGINE = SPIDER
  COMMENT = 'wrapper "mysql", table "images", auto_increment_mode "1"'
  PARTITION BY HASH (predicted_class) ($partitions);
START TRANSACTION;
INSERT INTO images SELECT * FROM images_unsharded;
COMMIT;
SQL
moved="$(sql "$head" "$db" -e "SELECT (SELECT COUNT(*) FROM images) = (SELECT COUNT(*) FROM images_unsharded)")"
[[ $moved == 1 ]] || die "the backends do not hold every row of $db.images_unsharded; it is kept on $head"
sql "$head" "$db" -e "DROP TABLE images_unsharded"
echo "shard-images: $db.images is on ${#backends[@]} backends (class c on backend c mod ${#backends[@]})"
