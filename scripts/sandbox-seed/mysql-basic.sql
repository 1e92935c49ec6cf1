-- scripts/sandbox-seed/mysql-basic.sql
-- Basic sample data for every MariaDB shard: databases db1 and db2, each with
-- tables table1 and table2 of 2000 rows.
--
-- scripts/sandbox feeds this file to the `mariadb` client (batch mode: the
-- first failing statement aborts the run) after setting two session variables:
--   @shard_offset  BIGINT   shard number * 1000000 (mysql-0 -> 0, mysql-1 -> 1000000, ...)
--   @shard_name    VARCHAR  the shard name, e.g. 'mysql-1'
-- Primary keys are @shard_offset + 1 .. @shard_offset + 2000, so rows are
-- deterministic and every shard's rows are distinguishable.
-- Re-running drops and recreates both databases.

DROP DATABASE IF EXISTS db1;
DROP DATABASE IF EXISTS db2;
CREATE DATABASE db1 CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE db2 CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE db1.table1 (
  id         BIGINT        NOT NULL PRIMARY KEY,
  name       VARCHAR(100)  NOT NULL,
  amount     DECIMAL(12,2) NOT NULL,
  created_at DATETIME(6)   NOT NULL
) ENGINE=InnoDB;
CREATE TABLE db1.table2 LIKE db1.table1;
CREATE TABLE db2.table1 LIKE db1.table1;
CREATE TABLE db2.table2 LIKE db1.table1;

-- seq_1_to_2000 is a virtual table of the SEQUENCE engine (built into MariaDB).
USE db1;

INSERT INTO db1.table1 (id, name, amount, created_at)
SELECT @shard_offset + seq,
       CONCAT('db1.table1 row ', seq, ' on ', @shard_name),
       ROUND(seq * 1.37, 2),
       TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE + INTERVAL (seq * 7919) % 1000000 MICROSECOND
  FROM seq_1_to_2000;

INSERT INTO db1.table2 (id, name, amount, created_at)
SELECT @shard_offset + seq,
       CONCAT('db1.table2 row ', seq, ' on ', @shard_name),
       ROUND(seq * 2.5 - 1000, 2),
       TIMESTAMP'2024-02-01 12:00:00' + INTERVAL seq SECOND + INTERVAL (seq * 104729) % 1000000 MICROSECOND
  FROM seq_1_to_2000;

INSERT INTO db2.table1 (id, name, amount, created_at)
SELECT @shard_offset + seq,
       CONCAT('db2.table1 row ', seq, ' on ', @shard_name),
       ROUND((seq % 97) * 10.01, 2),
       TIMESTAMP'2023-06-15 08:30:00' + INTERVAL seq HOUR
  FROM seq_1_to_2000;

INSERT INTO db2.table2 (id, name, amount, created_at)
SELECT @shard_offset + seq,
       CONCAT('db2.table2 row ', seq, ' on ', @shard_name),
       ROUND(seq / 7, 2),
       TIMESTAMP'2022-12-31 23:59:59.999999' + INTERVAL seq DAY
  FROM seq_1_to_2000;

ANALYZE TABLE db1.table1, db1.table2, db2.table1, db2.table2;
