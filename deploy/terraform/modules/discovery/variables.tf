variable "aws_region" {
  description = "AWS region of the discovery tier."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the discovery tier."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of that VPC."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (no route from the internet), spread over availability zones."
  type        = list(string)
}

variable "client_cidrs" {
  description = "CIDRs allowed to reach discovery_port: every region's VPC (proxies) and monitoring."
  type        = list(string)
  validation {
    condition     = alltrue([for c in var.client_cidrs : c != "0.0.0.0/0" && c != "::/0"])
    error_message = "Discovery is private: 0.0.0.0/0 and ::/0 are refused."
  }
}

variable "ami_id" {
  description = "Image of the discovery nodes: /usr/local/bin/tether, the AWS CLI, deploy/systemd/tether-discovery.service."
  type        = string
}

variable "etcd_ami_id" {
  description = "Image of the etcd members: etcd (Debian's etcd-server) and the AWS CLI."
  type        = string
}

variable "instance_type" {
  description = "Instance type of discovery nodes and etcd members."
  type        = string
  default     = "m7g.large"
}

variable "etcd_members" {
  description = "etcd cluster size (odd: 3 tolerates one failure, 5 two)."
  type        = number
  default     = 3
  validation {
    condition     = contains([3, 5], var.etcd_members)
    error_message = "etcd_members must be 3 or 5."
  }
}

variable "discovery_nodes" {
  description = "Stateless discovery nodes over the etcd cluster (>= 2 for failover)."
  type        = number
  default     = 2
  validation {
    condition     = var.discovery_nodes >= 2
    error_message = "Run at least 2 discovery nodes."
  }
}

variable "discovery_port" {
  description = "Discovery nodes' listener."
  type        = number
  default     = 7070
}

variable "etcd_prefix" {
  description = "Key prefix of tether's data in etcd ([store] prefix)."
  type        = string
  default     = "/tether/"
}

variable "heartbeat_interval_ms" {
  description = "Heartbeat interval proxies are told to use."
  type        = number
  default     = 2000
}

variable "ttl_ms" {
  description = "A server silent this long is evicted (3 x the interval)."
  type        = number
  default     = 6000
}

variable "private_zone_id" {
  description = "Route 53 private hosted zone (associated with every region's VPC) for etcd-N and discovery-N names."
  type        = string
}

variable "private_zone_name" {
  description = "Name of that zone, e.g. tether.internal."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key (in aws_region) for the SSM parameters and secrets."
  type        = string
}

variable "secret_names" {
  description = "Secrets Manager names: cluster_token, admin_token."
  type = object({
    cluster_token = string
    admin_token   = string
  })
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
