//! Integration tests of the `concord` server: real sockets, real databases. The same suite runs
//! against SQLite and against the local Postgres (`CONCORD_TEST_PG`, default
//! `postgres://postgres@127.0.0.1:5432/test`); with `CI=true` a missing Postgres fails the run.

mod abuse;
mod auth;
mod bad_input;
mod docapi;
mod history;
mod object_store;
mod operations;
mod resources;
mod scale_out;
mod store_faults;
mod suite;
mod support;
mod webhooks;

/// Instantiates each suite function once per store.
macro_rules! for_each_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::suite::$name(crate::support::Backend::Sqlite).await
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_changes_nothing() {
                crate::bad_input::bad_input_changes_nothing(crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_long_tail_is_folded_in_steps() {
                crate::resources::a_long_tail_is_folded_in_steps(crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn history_versions_diff_playback_restore() {
                crate::history::versions_diff_playback_restore(crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn document_api() {
                crate::docapi::document_api(crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn snapshots_in_a_bucket() {
                crate::object_store::snapshots_in_a_bucket(crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn webhooks_every_change_arrives_signed() {
                crate::webhooks::every_change_arrives_signed(crate::support::Backend::Sqlite).await
            }
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::suite::$name(crate::support::Backend::Postgres).await
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_changes_nothing() {
                crate::bad_input::bad_input_changes_nothing(crate::support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_long_tail_is_folded_in_steps() {
                crate::resources::a_long_tail_is_folded_in_steps(crate::support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn history_versions_diff_playback_restore() {
                crate::history::versions_diff_playback_restore(crate::support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn document_api() {
                crate::docapi::document_api(crate::support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn snapshots_in_a_bucket() {
                crate::object_store::snapshots_in_a_bucket(crate::support::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn webhooks_every_change_arrives_signed() {
                crate::webhooks::every_change_arrives_signed(crate::support::Backend::Postgres).await
            }
        }
    };
}

for_each_store!(
    concurrent_typing_at_one_spot_converges,
    offline_edits_replay_on_reconnect,
    restart_keeps_every_room,
    crash_keeps_every_acked_op,
    broadcast_before_commit_survives_a_crash,
    compaction_bounds_the_log,
    presence_is_relayed_and_left_on_close,
    routes_and_upgrade_errors,
);

mod abuse_suite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_bucket_is_not_ready() {
        crate::object_store::a_missing_bucket_is_not_ready().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_over_the_hard_bound_closes_with_1009() {
        crate::resources::a_frame_over_the_hard_bound_closes_with_1009().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_per_room_are_capped() {
        crate::resources::versions_per_room_are_capped().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn awareness_ids_cannot_be_taken_over() {
        crate::resources::awareness_ids_cannot_be_taken_over().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_address_limits_see_through_trusted_proxies() {
        crate::resources::per_address_limits_see_through_trusted_proxies().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_site_pages_and_rebound_names_are_refused() {
        crate::resources::cross_site_pages_and_rebound_names_are_refused().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_of_a_heavy_room_cannot_run_away() {
        crate::abuse::compaction_of_a_heavy_room_cannot_run_away().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loaded_rooms_are_capped() {
        crate::resources::loaded_rooms_are_capped().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_presence_is_refused_before_parsing() {
        crate::resources::oversized_presence_is_refused_before_parsing().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crowd_joining_cold_rooms_all_get_in() {
        crate::suite::a_crowd_joining_cold_rooms_all_get_in().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_budget_cuts_off_the_costly_connection() {
        crate::abuse::cpu_budget_cuts_off_the_costly_connection().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hit_and_run_updates_are_still_paid_for() {
        crate::abuse::hit_and_run_updates_are_still_paid_for().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_is_dropped() {
        crate::abuse::a_client_that_never_reads_is_dropped().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_presence_flood_slows_only_the_flooder() {
        crate::abuse::a_presence_flood_slows_only_the_flooder().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_and_costly_updates_stall_no_one() {
        crate::abuse::forged_and_costly_updates_stall_no_one().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_store_tells_the_sender_in_time() {
        crate::abuse::a_stalled_store_tells_the_sender_in_time().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_exits_within_grace_whatever_clients_do() {
        crate::abuse::sigterm_exits_within_grace_whatever_clients_do().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_frames_at_once_stay_inside_the_inbound_budget() {
        crate::abuse::big_frames_at_once_stay_inside_the_inbound_budget().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_is_timed_out_and_shutdown_is_bounded() {
        crate::abuse::slowloris_is_timed_out_and_shutdown_is_bounded().await
    }
}

mod auth_suite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_matrix() {
        crate::auth::token_matrix().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_sqlite() {
        crate::auth::accounts(crate::support::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_postgres() {
        crate::auth::accounts(crate::support::Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocation_reaches_every_instance() {
        crate::auth::revocation_reaches_every_instance().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_limits_hold_under_a_flood() {
        crate::auth::rate_limits_hold_under_a_flood().await
    }
}

mod operations_suite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn help_and_version() {
        crate::operations::help_and_version().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_settings_exit_2_naming_the_variable() {
        crate::operations::bad_settings_exit_2_naming_the_variable().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_follows_redis() {
        crate::operations::readyz_follows_redis().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_move_under_load() {
        crate::operations::metrics_move_under_load().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_can_be_turned_off() {
        crate::operations::metrics_can_be_turned_off().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_logs_carry_no_token() {
        crate::operations::json_logs_carry_no_token().await
    }
}
