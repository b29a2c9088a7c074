"""tensorflow_model_server's command line, for the tests of compose and Kubernetes files."""

from __future__ import annotations

# Every flag tensorflow_model_server 2.20.0 defines (tensorflow_serving/model_servers/main.cc at
# the 2.20.0 tag of tensorflow/serving, the image compose and Kubernetes pin); an unknown flag
# makes the server print usage and exit.
TF_SERVING_FLAGS = {
    "allow_version_labels_for_unavailable_models", "batching_parameters_file", "enable_batching",
    "enable_grpc_healthcheck_service", "enable_model_warmup",
    "enable_per_model_batching_parameters", "enable_profiler",
    "enable_serialization_as_tensor_content", "enable_signature_method_name_check",
    "file_system_poll_wait_seconds", "flush_filesystem_caches", "grpc_channel_arguments",
    "grpc_max_threads", "grpc_socket_path", "load_retry_interval_micros", "max_num_load_retries",
    "mixed_precision", "model_base_path", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "monitoring_config_file",
    "num_load_threads", "num_request_iterations_for_warmup", "num_tflite_interpreters_per_pool",
    "num_tflite_pools", "num_unload_threads", "per_process_gpu_memory_fraction",
    "platform_config_file", "port", "prefer_tflite_model",
    "remove_unused_fields_from_bundle_metagraph", "rest_api_enable_cors_support",
    "rest_api_num_threads", "rest_api_port", "rest_api_timeout_in_ms", "saved_model_tags",
    "skip_initialize_tpu", "ssl_config_file", "tensorflow_inter_op_parallelism",
    "tensorflow_intra_op_parallelism", "tensorflow_session_config_file",
    "tensorflow_session_parallelism", "thread_pool_factory_config_file", "use_alts_credentials",
    "version", "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
}  # fmt: skip


def parse_flags(args: list[str]) -> dict[str, str]:
    """--name=value arguments -> {name: value}; every argument must be one."""
    parsed = {}
    for arg in args:
        assert arg.startswith("--"), arg
        name, _, value = arg[2:].partition("=")
        parsed[name] = value
    return parsed
